//! `spade evaluate --generated`: images made elsewhere, paired with validation labels by stem.
use spade_data::{DatasetConfig, DatasetMode, Phase};
use std::path::Path;
use std::process::Command;

fn spade(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spade")).args(args).output().unwrap()
}

/// Writes the synthetic dataset's validation photos `0..n` (at `size`) as `{i:06}.png`: the
/// "generated" images of a perfect generator.
fn write_synthetic_val(dir: &Path, n: usize, size: usize) {
    let mut cfg = DatasetConfig::new(DatasetMode::Synthetic, None);
    cfg.phase = Phase::Val;
    cfg.is_train = Some(false);
    cfg.crop_size = Some(size);
    let ds = spade_data::open(&cfg).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let s = ds.load(i, 0).unwrap();
        let img = s.image.unwrap();
        let (h, w) = (img.height, img.width);
        let mut buf = image::RgbImage::new(w as u32, h as u32);
        for y in 0..h {
            for x in 0..w {
                let px: Vec<u8> = (0..3)
                    .map(|c| (((img.data[c * h * w + y * w + x] + 1.0) / 2.0) * 255.0).round().clamp(0.0, 255.0) as u8)
                    .collect();
                buf.put_pixel(x as u32, y as u32, image::Rgb([px[0], px[1], px[2]]));
            }
        }
        buf.save(dir.join(format!("{i:06}.png"))).unwrap();
    }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn scores_generated_synthetic_images_with_every_protocol_field() {
    let tmp = tempfile::tempdir().unwrap();
    let gen = tmp.path().join("gen");
    write_synthetic_val(&gen, 3, 32);
    let cache = tmp.path().join("cache");
    let o = spade(&[
        "evaluate",
        "--generated",
        gen.to_str().unwrap(),
        "--dataset",
        "synthetic",
        "--crop-size",
        "32",
        "--segmenter",
        "synthetic",
        "--segmenter-iterations",
        "2",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = read_json(&gen.join("metrics.json"));
    assert_eq!(m["images"], 3);
    assert_eq!(m["dataset"]["mode"], "synthetic");
    assert_eq!(m["dataset"]["preprocess"]["crop_size"], 32);
    // No Inception weights: unavailable, never a stand-in number.
    assert!(m["fid"]["value"].is_null() && m["fid"]["unavailable"].as_str().unwrap().contains("Inception"));
    let seg = &m["segmentation"];
    let p = &seg["protocol"];
    assert!(p["segmenter"].as_str().unwrap().starts_with("synthetic-segmenter"));
    assert_eq!(p["weights_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(p["input_resolution"], serde_json::json!([32, 32]));
    assert_eq!(p["label_resize"], "nearest_prediction_to_label");
    assert_eq!(p["dontcare"], serde_json::json!(["ignore", "count"]));
    for which in ["generated", "real_images"] {
        for dc in ["dontcare_ignore", "dontcare_count"] {
            let s = &seg[which][dc];
            assert_eq!(s["pixels"], 3 * 32 * 32, "{which} {dc}");
            let miou = s["mIoU"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&miou));
        }
    }
    // The generated images are the real photos (up to 8-bit rounding): same scores.
    let g = seg["generated"]["dontcare_ignore"]["accuracy"].as_f64().unwrap();
    let r = seg["real_images"]["dontcare_ignore"]["accuracy"].as_f64().unwrap();
    assert!((g - r).abs() < 0.02, "{g} vs {r}");

    // --out elsewhere, no segmenter.
    let out = tmp.path().join("elsewhere/m.json");
    let o = spade(&[
        "evaluate",
        "--generated",
        gen.to_str().unwrap(),
        "--dataset",
        "synthetic",
        "--crop-size",
        "32",
        "--segmenter",
        "none",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = read_json(&out);
    assert!(m["segmentation"]["unavailable"].is_string());

    // An image without a label, and one of the wrong size: errors name the file.
    image::RgbImage::new(32, 32).save(gen.join("no_such_label.png")).unwrap();
    let o = spade(&[
        "evaluate",
        "--generated",
        gen.to_str().unwrap(),
        "--dataset",
        "synthetic",
        "--crop-size",
        "32",
        "--segmenter",
        "none",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("no_such_label.png") && e.contains("stem"), "{e}");
    std::fs::remove_file(gen.join("no_such_label.png")).unwrap();
    image::RgbImage::new(16, 32).save(gen.join("000001.png")).unwrap();
    let o = spade(&[
        "evaluate",
        "--generated",
        gen.to_str().unwrap(),
        "--dataset",
        "synthetic",
        "--crop-size",
        "32",
        "--segmenter",
        "none",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("000001.png") && e.contains("16x32"), "{e}");
}

#[test]
fn pairs_a_folder_dataset_by_stem_and_needs_weights_for_paper_segmenters() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    spade_data::export_synthetic(&root, 3, 32, 32, 5).unwrap();
    let o = spade(&[
        "evaluate",
        "--generated",
        root.join("images").to_str().unwrap(),
        "--dataset",
        "custom",
        "--data-root",
        root.to_str().unwrap(),
        "--load-size",
        "32",
        "--crop-size",
        "32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = read_json(&root.join("images/metrics.json"));
    assert_eq!(m["images"], 3);
    assert_eq!(m["dataset"]["mode"], "folder");
    // `auto` on a folder dataset is no segmenter.
    assert!(m["segmentation"]["unavailable"].is_string());

    // The paper's networks need their released weights; the error says which file.
    let o = spade(&[
        "evaluate",
        "--generated",
        root.join("images").to_str().unwrap(),
        "--dataset",
        "custom",
        "--data-root",
        root.to_str().unwrap(),
        "--segmenter",
        "deeplabv2",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("deeplabv2_resnet101_msc-cocostuff164k-100000.pth"), "{e}");

    // Every missing file is listed at once, hub files with the cache layout to fill.
    let cache = tmp.path().join("hub");
    let o = spade(&[
        "evaluate",
        "--generated",
        root.join("images").to_str().unwrap(),
        "--dataset",
        "custom",
        "--data-root",
        root.to_str().unwrap(),
        "--segmenter",
        "upernet",
        "--segmenter-hub",
        "someorg/segmenters",
        "--hub-cache",
        cache.to_str().unwrap(),
        "--offline",
        "--fid-weights",
        tmp.path().join("pt_inception-2015-12-05-6726825d.pth").to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("needs 3 file(s)"), "{e}");
    for f in ["encoder_epoch_50.pth", "decoder_epoch_50.pth", "pt_inception-2015-12-05-6726825d.pth: no such file"] {
        assert!(e.contains(f), "{f}: {e}");
    }
    assert!(e.contains("models--someorg--segmenters/snapshots/<commit>/encoder_epoch_50.pth"), "{e}");
}
