//! Gradient checks: every fast kernel against the composed candle ops, values and gradients.
use super::conv::{conv2d, conv_transpose2d};
use super::norm::{composed, norm_modulate_act, norm_modulate_act_stacked, NormStats};
use super::pointwise::leaky_relu;
use candle_core::{Device, Result, Tensor, Var};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn scale(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0)
}

/// Compare `fast(vars)` with `reference(vars)`: outputs and the gradients of
/// `sum(out * r)` with respect to every var, relative to the larger magnitude.
fn check(
    what: &str,
    inputs: &[Tensor],
    fast: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
    tol: f32,
) {
    let run = |f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts).unwrap();
        let r = rand(y.dims(), 99);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Tensor> = ts.iter().map(|t| grads.get(t).expect("gradient").clone()).collect();
        (y, g)
    };
    let (yf, gf) = run(&fast);
    let (yr, gr) = run(&reference);
    let e = max_abs(&yf, &yr) / scale(&yr);
    assert!(e < tol, "{what}: output differs by {e}");
    for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
        let e = max_abs(a, b) / scale(b);
        assert!(e < tol, "{what}: gradient of input {i} differs by {e}");
    }
}

#[test]
fn conv2d_matches_candle() {
    // (n, cin, h, w, cout, k, stride, pad, bias)
    let cases = [
        (2, 3, 9, 7, 4, 3, 1, 1, true),
        (2, 5, 8, 8, 6, 1, 1, 0, false),
        (1, 4, 11, 11, 3, 4, 2, 2, true),
        // candle's own backward mishandles stride 2 on non-square inputs, so those stay square here.
        (2, 3, 10, 10, 2, 4, 2, 1, true),
        (2, 3, 12, 12, 5, 7, 1, 0, true),
        (1, 2, 7, 7, 3, 3, 2, 1, false),
        (3, 4, 4, 4, 8, 3, 1, 1, true),
        // The discriminator's last layers: a 4x4 kernel, stride 1, padding 2 (output grows).
        (2, 3, 5, 5, 4, 4, 1, 2, true),
        (2, 3, 2, 2, 4, 4, 2, 2, true),
        (2, 3, 3, 3, 1, 4, 1, 2, true),
        // Maps narrower than the padding: taps that see no input column at all.
        (2, 3, 1, 1, 2, 4, 1, 2, true),
        (1, 2, 3, 1, 2, 3, 1, 1, true),
        // The discriminator's first layer at the test trainer's size.
        (4, 11, 64, 64, 8, 4, 2, 2, true),
        (4, 8, 33, 33, 16, 4, 2, 2, false),
        // Large enough that each sample's im2col runs in several blocks of output rows.
        (1, 32, 128, 128, 4, 3, 1, 1, true),
        (1, 128, 96, 96, 3, 4, 2, 2, false),
        (1, 1, 5, 5, 1, 4, 2, 2, false),
        // Stride 1 on maps at least 16 wide: the shifted-input path, with channel counts that
        // split the weight gradient's panels across taps, padding 0 and 2, and k = 4.
        (2, 5, 17, 20, 7, 3, 1, 1, true),
        (2, 40, 19, 22, 33, 3, 1, 0, false),
        (2, 3, 16, 18, 5, 4, 1, 2, true),
        (1, 70, 24, 16, 13, 5, 1, 2, true),
        // Channel counts that are whole panels (the weight gradient packs one tap per panel).
        (2, 96, 16, 17, 8, 3, 1, 1, true),
        // Enough 2x2 tiles for the Winograd path (forward and input gradient) with up to 10
        // threads; odd width for partial tiles.
        (2, 6, 64, 63, 9, 3, 1, 1, true),
    ];
    for (i, &(n, cin, h, w, cout, k, stride, pad, bias)) in cases.iter().enumerate() {
        let mut inputs = vec![rand(&[n, cin, h, w], i as u64), rand(&[cout, cin, k, k], 10 + i as u64)];
        if bias {
            inputs.push(rand(&[cout], 20 + i as u64));
        }
        check(
            &format!("conv2d case {i}"),
            &inputs,
            |t| conv2d(&t[0], &t[1], t.get(2), stride, pad),
            |t| {
                let y = t[0].conv2d(&t[1], pad, stride, 1, 1)?;
                match t.get(2) {
                    Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
                    None => Ok(y),
                }
            },
            1e-5,
        );
    }
}

#[test]
fn conv_transpose2d_matches_candle() {
    // (n, ci, h, w, co, k, stride, pad, output_padding)
    for (i, &(n, ci, h, w, co, k, stride, pad, op)) in
        [(2, 4, 5, 6, 3, 3, 2, 1, 1), (1, 3, 4, 4, 2, 3, 1, 1, 0), (2, 2, 3, 5, 4, 4, 2, 1, 0)].iter().enumerate()
    {
        let inputs = vec![rand(&[n, ci, h, w], i as u64), rand(&[ci, co, k, k], 5 + i as u64), rand(&[co], 7)];
        check(
            &format!("conv_transpose2d case {i}"),
            &inputs,
            |t| conv_transpose2d(&t[0], &t[1], Some(&t[2]), stride, pad, op),
            |t| t[0].conv_transpose2d(&t[1], pad, op, stride, 1)?.broadcast_add(&t[2].reshape((1, (), 1, 1))?),
            1e-5,
        );
    }
}

#[test]
fn norm_modulate_act_matches_composed() {
    let shape = [3, 4, 5, 6];
    let fixed = NormStats::Fixed { mean: vec![0.1, -0.2, 0.3, 0.0], var: vec![0.5, 1.5, 0.9, 2.0] };
    for stats in [NormStats::Batch, NormStats::Instance, fixed] {
        for slope in [0.2, 1.0] {
            for modulate in [true, false] {
                let mut inputs = vec![((rand(&shape, 1) * 3.0).unwrap() + 0.5).unwrap()];
                if modulate {
                    inputs.push(rand(&shape, 2));
                    inputs.push(rand(&shape, 3));
                }
                let s1 = stats.clone();
                let s2 = stats.clone();
                check(
                    &format!("norm {stats:?} slope {slope} modulate {modulate}"),
                    &inputs,
                    move |t| Ok(norm_modulate_act(&t[0], s1.clone(), 1e-5, t.get(1).zip(t.get(2)), slope)?.0),
                    move |t| Ok(composed(&t[0], s2.clone(), 1e-5, t.get(1).zip(t.get(2)), slope)?.0),
                    2e-5,
                );
            }
        }
    }
}

#[test]
fn stacked_modulation_matches_composed() {
    let shape = [3, 4, 5, 6];
    let fixed = NormStats::Fixed { mean: vec![0.1, -0.2, 0.3, 0.0], var: vec![0.5, 1.5, 0.9, 2.0] };
    for stats in [NormStats::Batch, NormStats::Instance, fixed] {
        for slope in [0.2, 1.0] {
            let inputs = [((rand(&shape, 1) * 3.0).unwrap() + 0.5).unwrap(), rand(&[3, 8, 5, 6], 2)];
            let (s1, s2) = (stats.clone(), stats.clone());
            check(
                &format!("stacked norm {stats:?} slope {slope}"),
                &inputs,
                move |t| Ok(norm_modulate_act_stacked(&t[0], s1.clone(), 1e-5, &t[1], slope)?.0),
                move |t| {
                    let (g, b) = (t[1].narrow(1, 0, 4)?, t[1].narrow(1, 4, 4)?);
                    Ok(composed(&t[0], s2.clone(), 1e-5, Some((&g, &b)), slope)?.0)
                },
                2e-5,
            );
        }
    }
}

#[test]
fn batch_statistics_are_returned() {
    let x = rand(&[2, 3, 4, 4], 4);
    let (_, fast) = norm_modulate_act(&x, NormStats::Batch, 1e-5, None, 1.0).unwrap();
    let (_, slow) = composed(&x, NormStats::Batch, 1e-5, None, 1.0).unwrap();
    let ((fm, fv), (sm, sv)) = (fast.unwrap(), slow.unwrap());
    assert!(max_abs(&fm, &sm) < 1e-6 && max_abs(&fv, &sv) < 1e-6);
}

#[test]
fn leaky_relu_matches_composed() {
    check("leaky_relu", &[rand(&[2, 3, 5, 5], 8)], |t| leaky_relu(&t[0], 0.2), |t| t[0].maximum(&(&t[0] * 0.2)?), 1e-6);
}

#[test]
fn sgemm_matches_naive_products() {
    use super::gemm::{sgemm, MatRef};
    // Shapes around the kernel's tile (8 x 48) and block (256 deep, 768 rows) sizes, narrow
    // products that split A's rows between threads, and views with row-major and transposed
    // strides.
    for (i, &(m, n, k)) in [
        (1, 1, 1),
        (8, 48, 256),
        (9, 49, 257),
        (30, 70, 600),
        (5, 300, 3),
        (128, 100, 40),
        (800, 20, 30),
        (40, 4200, 10),
    ]
    .iter()
    .enumerate()
    {
        let a = rand(&[m * k], 30 + i as u64).to_vec1::<f32>().unwrap();
        let b = rand(&[k * n], 40 + i as u64).to_vec1::<f32>().unwrap();
        for transposed in [false, true] {
            let (av, bv) = if transposed {
                (MatRef::transposed(&a, m, k), MatRef::transposed(&b, k, n))
            } else {
                (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n))
            };
            let mut want = vec![0f64; m * n];
            for r in 0..m {
                for c in 0..n {
                    want[r * n + c] = (0..k)
                        .map(|p| av.data[r * av.rs + p * av.cs] as f64 * bv.data[p * bv.rs + c * bv.cs] as f64)
                        .sum();
                }
            }
            let mut got = vec![1f32; m * n];
            sgemm(&mut got, n, av, bv, false);
            let mut acc = vec![1f32; m * n];
            sgemm(&mut acc, n, av, bv, true);
            // The same product written into the left columns of a wider destination.
            let ldc = n + 5;
            let mut wide = vec![7f32; m * ldc];
            sgemm(&mut wide, ldc, av, bv, false);
            for r in 0..m {
                assert_eq!(&wide[r * ldc..r * ldc + n], &got[r * n..(r + 1) * n], "{m}x{n}x{k} ldc row {r}");
                assert!(
                    wide[r * ldc + n..(r + 1) * ldc].iter().all(|&v| v == 7.0),
                    "{m}x{n}x{k}: wrote past the columns"
                );
            }
            for j in 0..m * n {
                let tol = 1e-4 * (k as f64).sqrt();
                assert!(
                    (got[j] as f64 - want[j]).abs() < tol,
                    "{m}x{n}x{k} t={transposed} [{j}]: {} vs {}",
                    got[j],
                    want[j]
                );
                assert!((acc[j] as f64 - want[j] - 1.0).abs() < tol, "{m}x{n}x{k} accumulate [{j}]");
            }
        }
    }
}

#[test]
fn one_hot_convolution_matches_candle() {
    use super::conv::conv2d_sparse_input;
    // A one-hot map of 10 labels plus an instance-edge channel (two nonzeros at edge pixels),
    // and a dense input that must take the dense path.
    let (n, h, w) = (2, 9, 7);
    let mut v = vec![0f32; n * 11 * h * w];
    for i in 0..n {
        for p in 0..h * w {
            let label = (p * 7 + i * 3) % 10;
            v[(i * 11 + label) * h * w + p] = 1.0;
            if p % 5 == 0 {
                v[(i * 11 + 10) * h * w + p] = 1.0;
            }
        }
    }
    let onehot = Tensor::from_vec(v, (n, 11, h, w), &Device::Cpu).unwrap();
    for (what, x, k, pad) in [
        ("one-hot 3x3", onehot.clone(), 3, 1),
        ("one-hot 5x5", onehot, 5, 2),
        ("dense", rand(&[n, 11, h, w], 60), 3, 1),
    ] {
        let inputs = vec![x, rand(&[6, 11, k, k], 61), rand(&[6], 62)];
        check(
            what,
            &inputs,
            |t| conv2d_sparse_input(&t[0], &t[1], Some(&t[2]), 1, pad, 1.0),
            |t| t[0].conv2d(&t[1], pad, 1, 1, 1)?.broadcast_add(&t[2].reshape((1, (), 1, 1))?),
            1e-5,
        );
    }
}

#[test]
fn conv_with_fused_activation_matches_candle() {
    use super::conv::conv2d_act;
    for slope in [0.0, 0.2, 1.0] {
        let inputs = vec![rand(&[2, 3, 9, 9], 50), rand(&[4, 3, 3, 3], 51), rand(&[4], 52)];
        check(
            &format!("conv2d_act slope {slope}"),
            &inputs,
            |t| conv2d_act(&t[0], &t[1], Some(&t[2]), 1, 1, slope),
            |t| {
                let y = t[0].conv2d(&t[1], 1, 1, 1, 1)?.broadcast_add(&t[2].reshape((1, (), 1, 1))?)?;
                if slope == 0.0 {
                    y.relu()
                } else {
                    y.maximum(&(&y * slope)?)
                }
            },
            1e-5,
        );
    }
}

#[test]
fn upsample2x_matches_broadcast() {
    check(
        "upsample2x",
        &[rand(&[2, 3, 4, 5], 70)],
        |t| super::pointwise::upsample2x(&t[0]),
        |t| {
            let (n, c, h, w) = t[0].dims4()?;
            t[0].reshape((n, c, h, 1, w, 1))?.broadcast_as((n, c, h, 2, w, 2))?.reshape((n, c, 2 * h, 2 * w))
        },
        1e-6,
    );
}

#[test]
fn kernel_options_from_variables() {
    use super::{GemmKernel, KernelOptions};
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    assert_eq!(KernelOptions::from_vars(vars(&[])).unwrap(), KernelOptions::default());
    let o = KernelOptions::from_vars(vars(&[
        ("SPADE_STOCK_OPS", "1"),
        ("SPADE_WINOGRAD", "0"),
        ("SPADE_GEMM", "crate"),
        ("SPADE_PROFILE", "2"),
    ]))
    .unwrap();
    assert_eq!(o, KernelOptions { enabled: false, winograd: false, gemm: GemmKernel::Crate, profile: 2 });
    let e = KernelOptions::from_vars(vars(&[("SPADE_GEMM", "blas")])).unwrap_err();
    assert_eq!(e, "SPADE_GEMM=\"blas\": expected auto or crate");
    let e = KernelOptions::from_vars(vars(&[("SPADE_PROFILE", "9")])).unwrap_err();
    assert!(e.starts_with("SPADE_PROFILE=\"9\""), "{e}");
}
