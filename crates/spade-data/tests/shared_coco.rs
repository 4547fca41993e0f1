//! Real COCO-Stuff files from `../shared/data/coco_stuff_sample` (the reference's sample),
//! compared with what the reference pipeline (Pillow 13) gives for the same files.
//! Run with `cargo test -p spade-data --features shared-fixtures`.
use std::path::PathBuf;

use spade_data::{check, open, DatasetConfig, DatasetMode, Phase};

fn shared() -> PathBuf {
    let dir = std::env::var_os("SPADE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let sample = dir.join("data/coco_stuff_sample");
    assert!(
        sample.join("train_label").is_dir(),
        "shared fixtures missing: expected {} (set SPADE_SHARED to the shared/ folder)",
        sample.display()
    );
    sample
}

fn fnv(b: &[u8]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for &v in b {
        h ^= v as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

const TRAIN_LABELS: &[u32] = &[
    0, 2, 7, 9, 15, 16, 17, 18, 27, 36, 42, 49, 61, 64, 71, 72, 74, 77, 78, 83, 92, 95, 97, 100, 101, 104, 105, 106,
    109, 111, 112, 114, 116, 119, 122, 123, 125, 127, 129, 131, 138, 139, 142, 144, 148, 150, 151, 152, 153, 154, 155,
    156, 166, 168, 171, 172, 175, 182,
];
const VAL_LABELS: &[u32] = &[
    0, 5, 8, 15, 23, 26, 30, 34, 41, 61, 63, 64, 66, 71, 72, 73, 75, 76, 77, 81, 83, 84, 85, 94, 95, 97, 100, 101, 104,
    109, 111, 113, 115, 117, 118, 119, 122, 123, 124, 125, 129, 131, 138, 139, 141, 142, 147, 148, 149, 151, 154, 155,
    156, 158, 159, 164, 168, 171, 172, 174, 179, 180, 182,
];

#[test]
fn check_accepts_the_coco_stuff_sample() {
    let root = shared();
    let mut cfg = DatasetConfig::new(DatasetMode::Coco, Some(root));
    let r = check(&cfg).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>());
    assert_eq!((r.pairs, r.label_nc, r.labels_seen.as_slice()), (13, 182, TRAIN_LABELS));
    cfg.phase = Phase::Val;
    let r = check(&cfg).unwrap();
    assert!(r.problems.is_empty());
    assert_eq!((r.pairs, r.labels_seen.as_slice()), (8, VAL_LABELS));
}

/// Per val sample (test time: resize 256, crop at 0, no flip, so the reference is
/// deterministic): FNV-1a of the label ids (u32 LE) and instance ids after Pillow's NEAREST
/// resize and 255 -> 182, of Pillow's BICUBIC-resized RGB bytes, their sum, and of the
/// decoded JPEG (libjpeg-turbo via Pillow).
const PILLOW_VAL: &[(&str, u64, u64, u64, u64, u64)] = &[
    ("000000000139", 0xb18ee000f1dae60e, 0x641f8b1bc26aa989, 0x6322143d23f2c2f4, 20411681, 0xb4e79af54e654187),
    ("000000000785", 0x439d6bfda7256558, 0x9c05464830553834, 0x9b19efd4c3a12265, 38795894, 0x2e20f316e143d80a),
    ("000000001268", 0x3aa7be6aeef2a996, 0x4e5b9db4ff9796b8, 0x9fef18552fb96f93, 14605886, 0x67eba04f5b400c28),
    ("000000001490", 0xdf3cb9ae3e75d7c5, 0xcee97a9e4523be8e, 0x23d5d2e767a19b80, 28971429, 0x5a8318cecaeea1c0),
    ("000000001503", 0x824824896a160a52, 0xcf133e3f5dad3f42, 0x911d2652f266235b, 23332180, 0x1a72e8c2b8165f79),
    ("000000001584", 0x3b5b7bcb087d0200, 0xc54f29941106131f, 0xd1b02283b1991f05, 19897808, 0xbcd5ca54e9726cbc),
    ("000000001818", 0x17f8bb36346b59b5, 0xc2e0f1d6b1c554af, 0x1b2fa61667761545, 22897992, 0x7cd5886ce1a2498e),
    ("000000001993", 0x47b98db38fcf392f, 0xe5a8f4b3cf0e8c7e, 0xcc9613e648b62c6c, 21425629, 0x84bcceb26721f122),
];

#[test]
fn test_time_samples_match_the_reference_pipeline() {
    let mut cfg = DatasetConfig::new(DatasetMode::Coco, Some(shared()));
    cfg.phase = Phase::Val;
    let ds = open(&cfg).unwrap();
    assert_eq!(ds.len(), PILLOW_VAL.len());
    for (i, &(stem, label_h, inst_h, img_h, img_sum, jpeg_h)) in PILLOW_VAL.iter().enumerate() {
        let s = ds.load(i, 12345).unwrap();
        assert_eq!(s.path.file_stem().unwrap(), stem);
        let le = |d: &[u32]| d.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(fnv(&le(&s.label.data)), label_h, "{stem}: label ids differ from the reference");
        assert_eq!(fnv(&le(&s.instance.as_ref().unwrap().data)), inst_h, "{stem}: instance ids differ");
        let img = s.image.unwrap();
        let n = 256 * 256;
        let mut bytes = vec![0u8; 3 * n];
        for p in 0..n {
            for c in 0..3 {
                bytes[3 * p + c] = ((img.data[c * n + p] * 0.5 + 0.5) * 255.0).round() as u8;
            }
        }
        let sum: u64 = bytes.iter().map(|&v| v as u64).sum();
        let decoded =
            spade_data::read_image(&s.path.parent().unwrap().parent().unwrap().join(format!("val_img/{stem}.jpg")))
                .unwrap();
        let same_jpeg = fnv(&decoded.data) == jpeg_h;
        eprintln!("{stem}: jpeg decode identical to Pillow: {same_jpeg}; resized sum {sum} vs {img_sum}");
        if same_jpeg {
            assert_eq!(fnv(&bytes), img_h, "{stem}: bicubic bytes differ from the reference");
        } else {
            // JPEG decoders differ by a level here and there (zune-jpeg vs libjpeg-turbo);
            // the resized images' mean levels must still agree within 0.02 (seen: < 0.006).
            let mean_diff = (sum as f64 - img_sum as f64).abs() / (3 * n) as f64;
            assert!(mean_diff < 0.02, "{stem}: mean level difference {mean_diff}");
        }
    }
}
