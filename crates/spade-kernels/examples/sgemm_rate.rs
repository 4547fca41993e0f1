//! GFLOP/s of the matrix product the kernels use, at the shapes that dominate a SPADE block
//! (`SPADE_GEMM=crate` measures the `gemm` crate's instead of the AVX-512 kernel).
use spade_kernels::gemm::{sgemm, use_avx512, MatRef};
use std::time::Instant;

fn main() {
    spade_kernels::set_options(
        spade_kernels::KernelOptions::from_vars(|k| std::env::var(k).ok()).expect("kernel options"),
    );
    println!("kernel: {}", if use_avx512() { "AVX-512" } else { "gemm crate" });
    for &(m, n, k) in &[(2048, 2048, 2048), (128, 4096, 1152), (64, 16384, 1152), (1152, 4096, 128), (128, 1152, 4096)]
    {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        sgemm(&mut c, n, MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n), false);
        let reps = (2e10 / (2.0 * (m * n * k) as f64)).ceil() as usize;
        let t = Instant::now();
        for _ in 0..reps {
            sgemm(&mut c, n, MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n), false);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{m}x{n}x{k}: {:.1} GFLOP/s", 2.0 * (m * n * k) as f64 / s / 1e9);
    }
}
