//! The single-precision matrix product of the kernels: our AVX-512 kernel where the CPU has it,
//! the `gemm` crate's otherwise.

/// A read-only strided matrix: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major (rows x cols) matrix with contiguous rows.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major (cols x rows) matrix stored in `data`.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, rs: 1, cs: rows }
    }

    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "{what}: a {}x{} view needs {} elements, has {}",
                self.rows,
                self.cols,
                last + 1,
                self.data.len()
            );
        }
    }
}

/// Whether the AVX-512 kernel runs: the CPU has AVX-512F and [`KernelOptions::gemm`]
/// (`crate::KernelOptions`) does not ask for the `gemm` crate's.
pub fn use_avx512() -> bool {
    super::options().gemm == super::GemmKernel::Auto && super::avx512::available()
}

/// `dst = a * b` (or `dst += a * b` when `accumulate`), `dst` row-major (a.rows x b.cols) with
/// rows `ldc` apart. Large products run on rayon's threads.
pub fn sgemm(dst: &mut [f32], ldc: usize, a: MatRef, b: MatRef, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "sgemm: inner dimensions {k} and {} differ", b.rows);
    assert!(ldc >= n, "sgemm: row stride {ldc} is less than the {n} columns");
    let need = if m == 0 { 0 } else { (m - 1) * ldc + n };
    assert!(dst.len() >= need, "sgemm: destination has {} elements, needs {need}", dst.len());
    a.check("sgemm lhs");
    b.check("sgemm rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    if use_avx512() {
        return super::avx512::sgemm(dst, ldc, &a, &b, accumulate);
    }
    let threads = rayon::current_num_threads();
    let parallelism =
        if threads > 1 && m * n * k >= 1 << 17 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the three views were bounds-checked above for the given shapes and strides, and
    // `dst` is an exclusive borrow that the inputs cannot alias.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}
