//! Unit tests of the building blocks with hand-computed values.
use super::conv::{Conv2d, ConvSpec};
use super::norm::{instance_norm, BatchNorm};
use super::ops::*;
use super::spade::Spade;
use crate::options::SpadeNorm;
use crate::store::ParamStore;
use candle_core::{DType, Device, Tensor};

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

fn vec(x: &Tensor) -> Vec<f32> {
    x.flatten_all().unwrap().to_vec1().unwrap()
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn spectral_norm_eval_and_training_power_iteration() {
    // W = diag(3, 1) as a 2x2 1x1 conv; u = (1, 0), v = (0, 1) stored.
    let w = t(&[3., 0., 0., 1.], &[2, 2, 1, 1]);
    let store = ParamStore::from_state_dict(
        vec![
            ("c.bias".into(), t(&[0., 0.], &[2])),
            ("c.weight_orig".into(), w),
            ("c.weight_u".into(), t(&[1., 0.], &[2])),
            ("c.weight_v".into(), t(&[0.6, 0.8], &[2])),
        ],
        DType::F32,
        &Device::Cpu,
    );
    let conv = Conv2d::new(&store.root().pp("c"), ConvSpec::new(2, 2, 1).spectral(true), 0.02).unwrap();
    let sn = conv.spectral().unwrap();
    // eval: sigma = u . W v = (1,0) . (1.8, 0.8) = 1.8
    close(&vec(&sn.weight(false).unwrap()), &[3. / 1.8, 0., 0., 1. / 1.8]);
    // train: v = normalize(W^T u) = (1, 0); u = normalize(W v) = (1, 0); sigma = 3.
    close(&vec(&sn.weight(true).unwrap()), &[1., 0., 0., 1. / 3.]);
    close(&vec(&sn.u()), &[1., 0.]);
    close(&vec(&sn.v()), &[1., 0.]);
}

#[test]
fn batch_norm_training_and_running_statistics() {
    let store = ParamStore::fresh(0, DType::F32, &Device::Cpu);
    let bn = BatchNorm::new(&store.root(), 1, false, 0.02).unwrap();
    let x = t(&[1., 2., 3., 4.], &[2, 1, 1, 2]);
    let y = bn.forward_t(&x, true).unwrap();
    // mean 2.5, biased var 1.25
    let s = (1.25f32 + 1e-5).sqrt();
    close(&vec(&y), &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]);
    let sd = store.state_dict();
    let get = |k: &str| sd.iter().find(|(n, _)| n == k).unwrap().1.clone();
    close(&vec(&get("running_mean")), &[0.25]);
    // unbiased var 5/3: 0.9 * 1 + 0.1 * 5/3
    close(&vec(&get("running_var")), &[0.9 + 0.5 / 3.0]);
    assert_eq!(get("num_batches_tracked").to_dtype(DType::I64).unwrap().to_scalar::<i64>().unwrap(), 1);
    // eval uses the running statistics
    let y = bn.forward_t(&x, false).unwrap();
    let rv = (0.9f32 + 0.5 / 3.0 + 1e-5).sqrt();
    close(&vec(&y), &[0.75 / rv, 1.75 / rv, 2.75 / rv, 3.75 / rv]);
}

#[test]
fn instance_norm_per_sample_and_channel() {
    let x = t(&[1., 3., 10., 10.], &[1, 2, 1, 2]);
    let y = instance_norm(&x).unwrap();
    let s = (1f32 + 1e-5).sqrt();
    close(&vec(&y), &[-1. / s, 1. / s, 0., 0.]);
}

#[test]
fn average_pool_does_not_count_padding() {
    let x = Tensor::arange(0f32, 16., &Device::Cpu).unwrap().reshape((1, 1, 4, 4)).unwrap();
    let y = avg_pool2d_no_pad_count(&x, 3, 2, 1).unwrap();
    assert_eq!(y.dims(), &[1, 1, 2, 2]);
    // top-left window covers rows 0-1, cols 0-1: (0+1+4+5)/4
    close(&vec(&y), &[2.5, 4.0, 8.5, 10.0]);
}

#[test]
fn nearest_resize_uses_floor_of_scaled_index() {
    assert_eq!(nearest_indices(5, 3), vec![0, 1, 3]);
    assert_eq!(nearest_indices(2, 4), vec![0, 0, 1, 1]);
    let x = Tensor::arange(0f32, 4., &Device::Cpu).unwrap().reshape((1, 1, 2, 2)).unwrap();
    close(&vec(&upsample2x(&x).unwrap()), &[0., 0., 1., 1., 0., 0., 1., 1., 2., 2., 3., 3., 2., 2., 3., 3.]);
}

#[test]
fn reflection_pad_mirrors_without_the_edge() {
    let x = t(&[1., 2., 3.], &[1, 1, 1, 3]).broadcast_as((1, 1, 3, 3)).unwrap().contiguous().unwrap();
    let y = reflection_pad2d(&x, 2).unwrap();
    assert_eq!(y.dims(), &[1, 1, 7, 7]);
    close(&vec(&y.get(0).unwrap().get(0).unwrap().get(0).unwrap()), &[3., 2., 1., 2., 3., 2., 1.]);
}

#[test]
fn bilinear_resize_matches_pytorch_half_pixel_rule() {
    // torch: F.interpolate([[0, 1]], size=4, mode='bilinear', align_corners=False) = 0, .25, .75, 1
    let x = t(&[0., 1.], &[1, 1, 1, 2]);
    close(&vec(&resize_bilinear(&x, 1, 4).unwrap()), &[0., 0.25, 0.75, 1.]);
}

#[test]
fn spade_with_zero_weights_is_the_normalised_input() {
    // gamma = beta = 0 (zero convs): out = norm(x) * (1 + 0) + 0.
    let norm = SpadeNorm::parse("spadeinstance3x3").unwrap();
    let store = ParamStore::fresh(3, DType::F32, &Device::Cpu);
    let _ = Spade::new(&store.root(), norm, 1, 2, 0.02).unwrap();
    let zeros: Vec<(String, Tensor)> =
        store.state_dict().into_iter().map(|(n, t)| (n, t.zeros_like().unwrap())).collect();
    store.load_values(&zeros).unwrap();
    let x = t(&[1., 3.], &[1, 1, 1, 2]);
    let seg = Tensor::ones((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let spade = Spade::new(&store.root(), norm, 1, 2, 0.02).unwrap();
    let y = spade.forward_t(&x, &seg, false).unwrap();
    let s = (1f32 + 1e-5).sqrt();
    close(&vec(&y), &[-1. / s, 1. / s]);
}
