//! Bilinear resizing exactly as torch's `F.interpolate(mode="bilinear", align_corners=False)`
//! without antialiasing: the source coordinate of output index `d` is
//! `max(scale * (d + 0.5) - 0.5, 0)` with `scale = in / out` computed in f32, the lower index is
//! its floor (clamped to `in - 1`), the upper one `min(lower + 1, in - 1)`. Width is interpolated
//! first, then height, as torch's CPU kernel nests them.
use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Indices and weights of one axis: `out[d] = x[i0[d]] * w0[d] + x[i1[d]] * w1[d]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisWeights {
    pub i0: Vec<u32>,
    pub i1: Vec<u32>,
    pub w0: Vec<f32>,
    pub w1: Vec<f32>,
}

/// Torch's linear interpolation indices and weights for one axis (`align_corners=False`).
pub fn axis_weights(input: usize, output: usize) -> AxisWeights {
    axis_weights_scaled(input, output, input as f32 / output as f32)
}

/// As [`axis_weights`] with the source-coordinate scale given: torch uses `1 / scale_factor`
/// (computed in f64, then f32) when `F.interpolate` is called with `scale_factor` and
/// `recompute_scale_factor` unset, instead of `in / out`.
pub fn axis_weights_scaled(input: usize, output: usize, scale: f32) -> AxisWeights {
    let mut w = AxisWeights {
        i0: Vec::with_capacity(output),
        i1: Vec::with_capacity(output),
        w0: Vec::with_capacity(output),
        w1: Vec::with_capacity(output),
    };
    for d in 0..output {
        let src = scale * (d as f32 + 0.5) - 0.5;
        let src = if src < 0.0 { 0.0 } else { src };
        let lo = (src.floor() as usize).min(input - 1);
        let hi = (lo + 1).min(input - 1);
        let lambda = (src - lo as f32).clamp(0.0, 1.0);
        w.i0.push(lo as u32);
        w.i1.push(hi as u32);
        w.w0.push(1.0 - lambda);
        w.w1.push(lambda);
    }
    w
}

fn interpolate_axis(x: &Tensor, dim: usize, out: usize, scale: Option<f32>) -> Result<Tensor> {
    let input = x.dim(dim)?;
    let aw = match scale {
        Some(s) => axis_weights_scaled(input, out, s),
        None => axis_weights(input, out),
    };
    let dev = x.device();
    let i0 = Tensor::from_vec(aw.i0, out, dev)?;
    let i1 = Tensor::from_vec(aw.i1, out, dev)?;
    let mut shape = vec![1usize; x.rank()];
    shape[dim] = out;
    let w0 = Tensor::from_vec(aw.w0, shape.as_slice(), dev)?.to_dtype(x.dtype())?;
    let w1 = Tensor::from_vec(aw.w1, shape.as_slice(), dev)?.to_dtype(x.dtype())?;
    let a = x.index_select(&i0, dim)?.broadcast_mul(&w0)?;
    let b = x.index_select(&i1, dim)?.broadcast_mul(&w1)?;
    Ok((a + b)?)
}

/// Resizes a `(B, C, H, W)` tensor to `(B, C, out_h, out_w)` as torch's bilinear
/// `F.interpolate(..., align_corners=False)` (no antialias) does.
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == out_h && w == out_w {
        return Ok(x.clone());
    }
    let x = interpolate_axis(x, 3, out_w, None)?;
    interpolate_axis(&x, 2, out_h, None)
}

/// torch's `F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)`:
/// output `floor(n * factor)` per axis, source coordinates scaled by `1 / factor`.
pub fn resize_bilinear_by_factor(x: &Tensor, factor: f64) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = ((h as f64 * factor).floor() as usize, (w as f64 * factor).floor() as usize);
    let scale = (1.0 / factor) as f32;
    let x = interpolate_axis(x, 3, ow, Some(scale))?;
    interpolate_axis(&x, 2, oh, Some(scale))
}

/// An RGB8 image as a `(1, 3, H, W)` f32 tensor in `[0, 1]` (`ToTensor`'s `/255`).
pub fn rgb8_to_tensor(img: &image::RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let raw = img.as_raw();
    let mut data = vec![0f32; 3 * h * w];
    for (p, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * h * w + p] = px[c] as f32 / 255.0;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h, w), device)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_sizes_match() {
        let w = axis_weights(5, 5);
        assert_eq!(w.i0, vec![0, 1, 2, 3, 4]);
        assert!(w.w1.iter().all(|&l| l == 0.0));
    }

    #[test]
    fn upsample_2x_matches_torch() {
        // torch: F.interpolate(torch.tensor([[[[0., 1.]]]]), size=(1, 4), mode="bilinear",
        // align_corners=False) = [0, 0.25, 0.75, 1].
        let x = Tensor::new(&[[[[0f32, 1.0]]]], &Device::Cpu).unwrap();
        let y = resize_bilinear(&x, 1, 4).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn downsample_matches_torch() {
        // torch: F.interpolate(torch.arange(6.).view(1,1,1,6), size=(1,4), mode="bilinear",
        // align_corners=False) = [0.25, 1.75, 3.25, 4.75] (scale 1.5, no antialias).
        let x = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((1, 1, 1, 6)).unwrap();
        let y = resize_bilinear(&x, 1, 4).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0.25, 1.75, 3.25, 4.75]);
    }

    #[test]
    fn two_dimensional_is_separable_product() {
        // 2x2 -> 3x3: corners stay, centre is the mean of the four pixels.
        let x = Tensor::new(&[[[[0f32, 2.0], [4.0, 6.0]]]], &Device::Cpu).unwrap();
        let y = resize_bilinear(&x, 3, 3).unwrap();
        let v: Vec<Vec<f32>> = y.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        // scale 2/3: src = (d+0.5)*2/3-0.5 -> [-1/6->0, 0.5, 7/6] -> weights [0], [.5,.5], [1 (clamped)]
        assert_eq!(v[0][0], 0.0);
        assert!((v[1][1] - 3.0).abs() < 1e-6);
        assert!((v[2][2] - 6.0).abs() < 1e-6);
        assert!((v[0][1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rgb_to_tensor_is_chw_over_255() {
        let img = image::RgbImage::from_raw(2, 1, vec![255, 0, 51, 0, 102, 255]).unwrap();
        let t = rgb8_to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![1.0, 0.0, 0.0, 0.4, 0.2, 1.0]);
    }
}
