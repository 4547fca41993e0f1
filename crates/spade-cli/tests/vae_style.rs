//! Multi-modal synthesis end to end: `spade train` with the image encoder (use_vae, KLD) for
//! two iterations at 64x64 (the encoder resizes its input to 256x256, as the reference's does), tiny widths, then `spade synthesize --style` on its run directory: the style image
//! changes the output, and the same style gives the same output.
use std::path::Path;
use std::process::Command;

fn spade(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spade")).args(args).output().unwrap()
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap()
}

#[test]
fn trained_encoder_makes_the_style_image_matter() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let config = workspace().join("experiments/smoke.yaml");
    let o = spade(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--output-dir",
        run.to_str().unwrap(),
        "--set",
        "model.use_vae=true",
        "--set",
        "data.load_size=64",
        "--set",
        "data.crop_size=64",
        "--set",
        "model.ngf=2",
        "--set",
        "model.ndf=2",
        "--set",
        "train.batch_size=1",
        "--set",
        "train.max_iters=2",
        "--set",
        "train.save_latest_freq=2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let losses = std::fs::read_to_string(run.join("losses.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(losses.lines().next().unwrap()).unwrap();
    let kld = first["losses"]["KLD"].as_f64().expect("the KLD term is logged");
    assert!(kld.is_finite() && kld > 0.0, "KLD {kld}");

    // A label map of synthetic classes (sky over grass), its instance map, two style images.
    let d = tmp.path();
    image::GrayImage::from_fn(32, 32, |_, y| image::Luma([if y < 14 { 0 } else { 8 }])).save(d.join("l.png")).unwrap();
    image::GrayImage::from_fn(32, 32, |_, y| image::Luma([if y < 14 { 0 } else { 8 }])).save(d.join("i.png")).unwrap();
    image::RgbImage::from_fn(40, 40, |x, y| image::Rgb([(x * 6) as u8, 40, (y * 6) as u8]))
        .save(d.join("s1.png"))
        .unwrap();
    image::RgbImage::from_fn(40, 40, |_, _| image::Rgb([250, 240, 20])).save(d.join("s2.png")).unwrap();
    let synth = |style: &str, out: &str| {
        let o = spade(&[
            "synthesize",
            "--checkpoint",
            run.to_str().unwrap(),
            "--label",
            d.join("l.png").to_str().unwrap(),
            "--instance",
            d.join("i.png").to_str().unwrap(),
            "--style",
            d.join(style).to_str().unwrap(),
            "--seed",
            "3",
            "--output-dir",
            d.join(out).to_str().unwrap(),
            "--raw",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        candle_core::Tensor::read_npy(d.join(out).join("l.npy"))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let a = synth("s1.png", "a");
    let a2 = synth("s1.png", "a2");
    let b = synth("s2.png", "b");
    assert_eq!(a, a2, "the same style and seed give the same image");
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    // The same style gives bit-identical output (above), so any difference comes from the style
    // image. After two iterations from the reference's small initialisation (xavier, gain 0.02)
    // the encoder's effect is small, about 1e-6; it only has to be there.
    assert!(diff > 0.0, "the style image changes the output (max difference {diff})");
}
