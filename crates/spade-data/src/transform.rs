//! The reference's preprocessing (`data/base_dataset.py`: `get_params`, `get_transform`) and
//! label mapping (`pix2pix_dataset.py`, `ade20k_dataset.py`).
use std::path::Path;

use crate::config::{DatasetMode, Preprocess, PreprocessMode};
use crate::error::{DataError, Result};
use crate::resample::{crop, flip_horizontal, resize_bicubic, resize_nearest, Plane};
use crate::rng::Rng;
use crate::{Image, LabelMap, RgbImage};

/// How raw label values become ids `0..label_nc` (with `label_nc` = don't care).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelMapping {
    pub label_nc: u32,
    pub contain_dontcare_label: bool,
    /// ADE20K: raw 0 is "other" (don't care) and the class ids are `raw - 1`.
    pub shift_by_one: bool,
}

impl LabelMapping {
    pub fn new(mode: DatasetMode, label_nc: usize, contain_dontcare_label: bool) -> Self {
        LabelMapping { label_nc: label_nc as u32, contain_dontcare_label, shift_by_one: mode.is_ade20k() }
    }

    /// The id of a raw value, or `None` when the value is invalid.
    #[inline]
    pub fn map(&self, raw: u32) -> Option<u32> {
        let nc = self.label_nc;
        if self.shift_by_one {
            match raw {
                0 if self.contain_dontcare_label => Some(nc),
                0 => None,
                v if v <= nc => Some(v - 1),
                _ => None,
            }
        } else if raw == 255 && self.contain_dontcare_label {
            Some(nc)
        } else if raw < nc {
            Some(raw)
        } else {
            None
        }
    }

    /// The valid raw values, in words (for error messages).
    pub fn describe_valid(&self) -> String {
        let nc = self.label_nc;
        match (self.shift_by_one, self.contain_dontcare_label) {
            (false, true) => format!("0..={} or 255 (don't care) for label_nc {nc}", nc - 1),
            (false, false) => format!("0..={} for label_nc {nc}", nc - 1),
            (true, true) => format!("0..={nc} for label_nc {nc} (ADE20K raw values: 0 = don't care, v -> v - 1)"),
            (true, false) => format!("1..={nc} for label_nc {nc} (ADE20K raw values: v -> v - 1)"),
        }
    }

    /// The id that crop padding (raw 0 in the reference) becomes.
    pub fn fill(&self) -> u32 {
        self.map(0).unwrap_or(0)
    }

    /// Maps every pixel; any invalid value is an error naming the file, the values and the
    /// valid range.
    pub fn apply(&self, path: &Path, raw: LabelMap) -> Result<LabelMap> {
        let max = raw.data.iter().copied().max().unwrap_or(0);
        let mut out = raw;
        if max < 65536 {
            let lut: Vec<Option<u32>> = (0..=max).map(|v| self.map(v)).collect();
            if out.data.iter().all(|&v| lut[v as usize].is_some()) {
                for v in out.data.iter_mut() {
                    *v = lut[*v as usize].unwrap_or(0);
                }
                return Ok(out);
            }
        } else if out.data.iter().all(|&v| self.map(v).is_some()) {
            for v in out.data.iter_mut() {
                *v = self.map(*v).unwrap_or(0);
            }
            return Ok(out);
        }
        let mut bad: Vec<u32> = out.data.iter().copied().filter(|&v| self.map(v).is_none()).collect();
        let pixels = bad.len();
        bad.sort_unstable();
        bad.dedup();
        Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            value: bad[0],
            valid: self.describe_valid(),
            pixels,
            values: bad,
        })
    }
}

/// The random part of preprocessing, shared by label, image and instance map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AugParams {
    pub crop_x: usize,
    pub crop_y: usize,
    pub flip: bool,
}

/// The reference's `get_params(opt, size)`, drawing from `rng`.
///
/// Quirk kept from the reference: `scale_shortside*` keeps the *original* short side and
/// scales only the long side to `int(load_size * long / short)` (both in `get_params` and in
/// `__scale_shortside`), so e.g. 500x375 with load 256 becomes 341x375.
pub fn get_params(p: &Preprocess, width: usize, height: usize, rng: &mut Rng) -> AugParams {
    let (w, h) = (width, height);
    let (new_w, new_h) = match p.mode {
        PreprocessMode::ResizeAndCrop => (p.load_size, p.load_size),
        PreprocessMode::ScaleWidthAndCrop => (p.load_size, p.load_size * h / w),
        PreprocessMode::ScaleShortsideAndCrop => {
            let (ss, ls) = (w.min(h), w.max(h));
            let ls = (p.load_size as f64 * ls as f64 / ss as f64) as usize;
            if w == ss {
                (ss, ls)
            } else {
                (ls, ss)
            }
        }
        _ => (w, h),
    };
    let crop_x = rng.randint(0, new_w.saturating_sub(p.crop_size));
    let crop_y = rng.randint(0, new_h.saturating_sub(p.crop_size));
    let flip = rng.next_f64() > 0.5;
    AugParams { crop_x, crop_y, flip }
}

/// Python's `round()` (half to even) as an integer size.
fn py_round(v: f64) -> usize {
    v.round_ties_even().max(0.0) as usize
}

/// The size a preprocessing mode produces from a `width x height` input (before flip).
pub fn output_size(p: &Preprocess, width: usize, height: usize) -> (usize, usize) {
    let (mut w, mut h) = (width, height);
    if p.mode.resizes_square() {
        (w, h) = (p.load_size, p.load_size);
    } else if p.mode.scales_width() {
        if w != p.load_size {
            (w, h) = (p.load_size, (p.load_size as f64 * h as f64 / w as f64) as usize);
        }
    } else if p.mode.scales_shortside() {
        let (ss, ls) = (w.min(h), w.max(h));
        if ss != p.load_size {
            let ls = (p.load_size as f64 * ls as f64 / ss as f64) as usize;
            (w, h) = if w == ss { (ss, ls) } else { (ls, ss) };
        }
    }
    if p.mode.crops() {
        (w, h) = (p.crop_size, p.crop_size);
    }
    if p.mode == PreprocessMode::None {
        let base = 32.0;
        (w, h) = ((py_round(w as f64 / base) * 32).max(32), (py_round(h as f64 / base) * 32).max(32));
    }
    if p.mode == PreprocessMode::Fixed {
        (w, h) = (p.crop_size, py_round(p.crop_size as f64 / p.aspect_ratio).max(1));
    }
    (w.max(1), h.max(1))
}

/// The reference's `get_transform` pipeline on one plane: resize / scale, crop, make a
/// multiple of 32 (`none`), fixed resize, flip. `resize` is nearest or bicubic.
fn pipeline<T: Copy>(
    src: Plane<T>,
    p: &Preprocess,
    a: &AugParams,
    fill: T,
    resize: impl Fn(&Plane<T>, usize, usize) -> Plane<T>,
) -> Plane<T> {
    let mut img = src;
    let (w, h) = (img.width, img.height);
    if p.mode.resizes_square() {
        img = resize(&img, p.load_size, p.load_size);
    } else if p.mode.scales_width() {
        if w != p.load_size {
            let nh = (p.load_size as f64 * h as f64 / w as f64) as usize;
            img = resize(&img, p.load_size, nh.max(1));
        }
    } else if p.mode.scales_shortside() {
        let (ss, ls) = (w.min(h), w.max(h));
        if ss != p.load_size {
            let ls = (p.load_size as f64 * ls as f64 / ss as f64) as usize;
            let (nw, nh) = if w == ss { (ss, ls) } else { (ls, ss) };
            img = resize(&img, nw, nh);
        }
    }
    if p.mode.crops() {
        img = crop(&img, a.crop_x, a.crop_y, p.crop_size, p.crop_size, fill);
    }
    if p.mode == PreprocessMode::None {
        let (ow, oh) = (img.width, img.height);
        let nw = (py_round(ow as f64 / 32.0) * 32).max(32);
        let nh = (py_round(oh as f64 / 32.0) * 32).max(32);
        if nw != ow || nh != oh {
            img = resize(&img, nw, nh);
        }
    }
    if p.mode == PreprocessMode::Fixed {
        let nh = py_round(p.crop_size as f64 / p.aspect_ratio).max(1);
        img = resize(&img, p.crop_size, nh);
    }
    if p.flip && a.flip {
        flip_horizontal(&mut img);
    }
    img
}

/// Preprocesses a label or instance map (nearest resize; crop padding is `fill`).
pub fn transform_map(map: LabelMap, p: &Preprocess, a: &AugParams, fill: u32) -> LabelMap {
    let plane = Plane::new(map.width, map.height, 1, map.data);
    let out = pipeline(plane, p, a, fill, resize_nearest);
    LabelMap { height: out.height, width: out.width, data: out.data }
}

/// Preprocesses an 8-bit RGB image (bicubic resize, black crop padding) without converting it.
pub fn transform_rgb(img: RgbImage, p: &Preprocess, a: &AugParams) -> RgbImage {
    let plane = Plane::new(img.width, img.height, 3, img.data);
    let out = pipeline(plane, p, a, 0u8, resize_bicubic);
    RgbImage { width: out.width, height: out.height, data: out.data }
}

/// `ToTensor()` + `Normalize((0.5,)*3, (0.5,)*3)`: HWC u8 to CHW f32 in [-1, 1].
pub fn to_normalized(img: &RgbImage) -> Image {
    let n = img.width * img.height;
    let mut data = vec![0f32; 3 * n];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * n + i] = (px[c] as f32 / 255.0 - 0.5) / 0.5;
        }
    }
    Image { height: img.height, width: img.width, data }
}
