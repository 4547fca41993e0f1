//! Preprocessing against the reference: PIL's resize bytes, `get_params`/`get_transform`
//! output sizes, label mappings and normalisation.
use spade_data::config::{DatasetMode, Preprocess, PreprocessMode};
use spade_data::resample::{crop, flip_horizontal, resize_bicubic, resize_nearest, Plane};
use spade_data::rng::Rng;
use spade_data::transform::{get_params, output_size, to_normalized, transform_map, AugParams, LabelMapping};
use spade_data::{DataError, LabelMap, RgbImage};
use std::path::Path;

fn pattern(w: usize, h: usize) -> Plane<u8> {
    let mut d = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                d.push(((x * 37 + y * 91 + c * 53 + ((x * y) % 7) * 13) % 256) as u8);
            }
        }
    }
    Plane::new(w, h, 3, d)
}

fn fnv(b: &[u8]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for &v in b {
        h ^= v as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// ((in_w, in_h), (out_w, out_h), FNV-1a of Pillow 13's BICUBIC RGB bytes, FNV-1a of its
/// NEAREST bytes of channel 0, first and middle bicubic byte). Made with
/// `Image.fromarray(pattern).resize((w, h), Image.BICUBIC / Image.NEAREST)`.
type PillowCase = ((usize, usize), (usize, usize), u64, u64, u8, u8);
const PILLOW: &[PillowCase] = &[
    ((37, 23), (13, 9), 0x55201381e93a9831, 0x6061621fd5ad3d11, 115, 143),
    ((37, 23), (80, 50), 0x10a33b392b71987f, 0xcae96d8ecef8047c, 0, 219),
    ((37, 23), (37, 50), 0x526ad49eeae5fbc5, 0x17f742f891e508a5, 0, 207),
    ((37, 23), (20, 23), 0x2e6d5a7e41e425b9, 0x234c1e493ed46453, 17, 228),
    ((300, 200), (286, 286), 0x58fcc6e27f1e5ec6, 0xb27bcade7627168e, 0, 127),
    ((300, 200), (256, 171), 0x61537d1a89165cca, 0x21caf13167c277d9, 11, 62),
    ((640, 480), (286, 286), 0xc658bc677a41b3b9, 0xc7d6db244f129d34, 72, 150),
    ((500, 375), (256, 256), 0xb6796467ceaa6881, 0x827c79e276758b53, 48, 149),
];

#[test]
fn bicubic_resize_is_byte_exact_with_pillow() {
    for &((iw, ih), (ow, oh), hash, _, first, mid) in PILLOW {
        let out = resize_bicubic(&pattern(iw, ih), ow, oh);
        assert_eq!((out.width, out.height), (ow, oh));
        assert_eq!(out.data[0], first, "{iw}x{ih} -> {ow}x{oh} first byte");
        assert_eq!(out.data[out.data.len() / 2], mid, "{iw}x{ih} -> {ow}x{oh} middle byte");
        assert_eq!(fnv(&out.data), hash, "{iw}x{ih} -> {ow}x{oh} bicubic bytes differ from Pillow");
    }
}

#[test]
fn nearest_resize_is_byte_exact_with_pillow() {
    for &((iw, ih), (ow, oh), _, hash, _, _) in PILLOW {
        let p = pattern(iw, ih);
        let gray = Plane::new(iw, ih, 1, p.data.chunks(3).map(|c| c[0]).collect());
        let out = resize_nearest(&gray, ow, oh);
        assert_eq!(fnv(&out.data), hash, "{iw}x{ih} -> {ow}x{oh} nearest bytes differ from Pillow");
    }
}

#[test]
fn bicubic_downscale_antialiases_a_checkerboard() {
    // A 1-pixel checkerboard downscaled 4x averages to grey under PIL's widened kernel; a
    // fixed-support bicubic would alias to near black/white.
    let d: Vec<u8> = (0..64 * 64).map(|i| if (i % 64 + i / 64) % 2 == 0 { 0 } else { 255 }).collect();
    let out = resize_bicubic(&Plane::new(64, 64, 1, d), 16, 16);
    for y in 1..15 {
        for x in 1..15 {
            let v = out.data[y * 16 + x];
            assert!((120..=135).contains(&v), "downscaled checkerboard value {v} at ({x}, {y})");
        }
    }
}

#[test]
fn crop_pads_outside_with_fill_and_flip_mirrors() {
    let p = Plane::new(3, 2, 1, vec![1u32, 2, 3, 4, 5, 6]);
    let c = crop(&p, 1, 1, 3, 2, 9);
    assert_eq!(c.data, vec![5, 6, 9, 9, 9, 9]);
    let mut f = p.clone();
    flip_horizontal(&mut f);
    assert_eq!(f.data, vec![3, 2, 1, 6, 5, 4]);
}

fn pre(mode: PreprocessMode, load: usize, crop: usize, aspect: f64) -> Preprocess {
    Preprocess { mode, load_size: load, crop_size: crop, aspect_ratio: aspect, flip: true }
}

#[test]
fn output_sizes_follow_get_transform() {
    use PreprocessMode::*;
    let cases = [
        (pre(ResizeAndCrop, 286, 256, 1.0), (500, 375), (256, 256)),
        (pre(ResizeAndCrop, 256, 256, 1.0), (640, 480), (256, 256)),
        (pre(ScaleWidth, 512, 256, 1.0), (500, 375), (512, 384)),
        (pre(ScaleWidthAndCrop, 512, 256, 1.0), (500, 375), (256, 256)),
        // The reference's __scale_shortside keeps the original short side (375) and scales
        // only the long one: int(256 * 500 / 375) = 341. Kept as the reference does it.
        (pre(ScaleShortside, 256, 256, 1.0), (500, 375), (341, 375)),
        (pre(ScaleShortside, 256, 256, 1.0), (375, 500), (375, 341)),
        (pre(Fixed, 512, 512, 2.0), (2048, 1024), (512, 256)),
        (pre(Fixed, 512, 300, 1.5), (100, 100), (300, 200)),
        // none: round to multiples of 32, Python round half to even: 375/32 = 11.7 -> 12.
        (pre(None, 1, 1, 1.0), (500, 375), (512, 384)),
        (pre(None, 1, 1, 1.0), (80, 48), (64, 64)), // 2.5 -> 2, 1.5 -> 2
        (pre(Crop, 1, 64, 1.0), (100, 80), (64, 64)),
    ];
    for (p, (w, h), want) in cases {
        assert_eq!(output_size(&p, w, h), want, "{:?} on {w}x{h}", p.mode);
        let m = LabelMap { height: h, width: w, data: vec![0; w * h] };
        let a = AugParams { crop_x: 0, crop_y: 0, flip: false };
        let out = transform_map(m, &p, &a, 0);
        assert_eq!((out.width, out.height), want, "{:?} transform on {w}x{h}", p.mode);
    }
}

#[test]
fn get_params_crop_ranges_follow_the_reference() {
    use PreprocessMode::*;
    let mut rng = Rng::new(7);
    let mut max = (0, 0);
    let mut flips = 0;
    for _ in 0..2000 {
        let a = get_params(&pre(ResizeAndCrop, 286, 256, 1.0), 640, 480, &mut rng);
        max = (max.0.max(a.crop_x), max.1.max(a.crop_y));
        flips += a.flip as usize;
    }
    assert_eq!(max, (30, 30), "randint(0, 286 - 256) is inclusive");
    assert!((900..1100).contains(&flips), "flip with p 0.5: {flips}/2000");
    // scale_width_and_crop: new_h = load * h // w = 512 * 375 // 500 = 384.
    let mut m = (0, 0);
    for _ in 0..2000 {
        let a = get_params(&pre(ScaleWidthAndCrop, 512, 256, 1.0), 500, 375, &mut rng);
        m = (m.0.max(a.crop_x), m.1.max(a.crop_y));
    }
    assert_eq!(m, (256, 128));
    // The reference's scale_shortside quirk: the short side is the original one (375), not
    // load_size, so y ranges over 375 - 256.
    let mut m = (0, 0);
    for _ in 0..4000 {
        let a = get_params(&pre(ScaleShortsideAndCrop, 286, 256, 1.0), 500, 375, &mut rng);
        m = (m.0.max(a.crop_x), m.1.max(a.crop_y));
    }
    assert_eq!(m, ((286.0f64 * 500.0 / 375.0) as usize - 256, 375 - 256));
}

#[test]
fn label_mappings_and_their_errors() {
    let coco = LabelMapping::new(DatasetMode::Coco, 182, true);
    assert_eq!(coco.map(0), Some(0));
    assert_eq!(coco.map(181), Some(181));
    assert_eq!(coco.map(255), Some(182));
    assert_eq!(coco.map(182), None);
    let ade = LabelMapping::new(DatasetMode::Ade20k, 150, true);
    assert_eq!(ade.map(0), Some(150));
    assert_eq!(ade.map(1), Some(0));
    assert_eq!(ade.map(150), Some(149));
    assert_eq!(ade.map(151), None);
    assert_eq!(ade.fill(), 150, "crop padding (raw 0) is don't care in ADE20K");
    let city = LabelMapping::new(DatasetMode::Cityscapes, 35, false);
    assert_eq!(city.map(34), Some(34));
    assert_eq!(city.map(255), None);

    let raw = LabelMap { height: 1, width: 5, data: vec![3, 200, 255, 190, 200] };
    let err = coco.apply(Path::new("/d/a.png"), raw).unwrap_err();
    assert!(matches!(err, DataError::LabelOutOfRange { value: 190, pixels: 3, .. }));
    assert_eq!(
        err.to_string(),
        "/d/a.png: label value 190 is outside the valid range 0..=181 or 255 (don't care) for label_nc 182 (3 pixels with invalid values [190, 200])"
    );
    let raw = LabelMap { height: 1, width: 3, data: vec![0, 1, 151] };
    let err = ade.apply(Path::new("/d/b.png"), raw).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/d/b.png: label value 151 is outside the valid range 0..=150 for label_nc 150 (ADE20K raw values: 0 = don't care, v -> v - 1) (1 pixels with invalid values [151])"
    );
    let ok = ade.apply(Path::new("/d/c.png"), LabelMap { height: 1, width: 3, data: vec![0, 1, 150] }).unwrap();
    assert_eq!(ok.data, vec![150, 0, 149]);
}

#[test]
fn images_are_normalised_to_minus_one_one_chw() {
    let img = RgbImage { width: 2, height: 1, data: vec![0, 128, 255, 10, 20, 30] };
    let t = to_normalized(&img);
    assert_eq!((t.width, t.height, t.data.len()), (2, 1, 6));
    let f = |v: u8| (v as f32 / 255.0 - 0.5) / 0.5;
    assert_eq!(t.data, vec![-1.0, f(10), f(128), f(20), 1.0, f(30)]);
}
