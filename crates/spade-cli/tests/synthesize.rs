//! `spade synthesize` end to end on a checkpoint the test makes itself (no ../shared needed):
//! output equals an in-process forward; a wrong opt.txt and a bad label value give clear errors.
use candle_core::{DType, Device, Tensor};
use spade_models::checkpoint::Generator;
use spade_models::{NetOptions, ParamStore, SemanticsSpec};
use std::path::Path;
use std::process::Command;

fn tiny_options() -> NetOptions {
    NetOptions { label_nc: 4, ngf: 2, crop_size: 32, ..Default::default() }
}

fn write_gray(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)])).save(path).unwrap();
}

/// A run directory with random weights (safetensors), opt.txt, a 40x40 label and instance map.
fn setup(dir: &Path) -> (NetOptions, Generator) {
    let opt = tiny_options();
    let store = ParamStore::fresh(7, DType::F32, &Device::Cpu);
    let g = Generator::new(&opt, &store.root()).unwrap();
    spade_io::checkpoint::save_safetensors(&dir.join("latest_net_G.safetensors"), &store.state_dict()).unwrap();
    std::fs::write(dir.join("opt.txt"), opt.to_opt_text()).unwrap();
    write_gray(&dir.join("scene.png"), 40, 40, |x, y| if x < 10 { 255 } else { ((x / 10 + y / 20) % 4) as u8 });
    write_gray(&dir.join("scene_inst.png"), 40, 40, |x, _| (x / 13) as u8);
    (opt, g)
}

fn spade(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spade")).args(args).output().unwrap()
}

#[test]
fn synthesizes_what_the_network_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (opt, g) = setup(d);
    let out = d.join("out");
    let o = spade(&[
        "synthesize",
        "--checkpoint",
        d.to_str().unwrap(),
        "--label",
        d.join("scene.png").to_str().unwrap(),
        "--instance",
        d.join("scene_inst.png").to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--raw",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = image::open(out.join("scene.png")).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (32, 32));
    let raw = Tensor::read_npy(out.join("scene.npy")).unwrap();
    assert_eq!(raw.dims(), &[3, 32, 32]);

    // The same input built in-process: the 40x40 maps resized (nearest, as PIL) to 32x32.
    let idx = |i: u32| (i as f64 * 40.0 / 32.0 + 40.0 / 64.0).floor() as u32;
    let mut ids: Vec<u32> = (0..32 * 32)
        .map(|p| {
            let (x, y) = (idx(p % 32), idx(p / 32));
            if x < 10 {
                255
            } else {
                (x / 10 + y / 20) % 4
            }
        })
        .collect();
    let inst: Vec<u32> = (0..32 * 32).map(|p| idx(p % 32) / 13).collect();
    let spec = SemanticsSpec::from(&opt);
    spec.ids_from_raw(&mut ids, 32, "scene.png").unwrap();
    let seg = spec.build(&[&ids], Some(&[&inst]), 32, 32, &Device::Cpu).unwrap();
    let want = g.forward_t(&seg, None, false).unwrap().squeeze(0).unwrap();
    let err: f32 = (raw - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    assert!(err < 1e-5, "raw output differs from the in-process forward by {err}");
    // PNG = (x + 1) / 2 * 255 truncated
    let v: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(png.get_pixel(5, 7)[1], ((v[32 * 32 + 7 * 32 + 5] + 1.0) / 2.0 * 255.0) as u8);
}

#[test]
fn wrong_options_name_tensor_shapes_and_option() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d);
    let wrong = NetOptions { label_nc: 5, ..tiny_options() };
    std::fs::write(d.join("opt.txt"), wrong.to_opt_text()).unwrap();
    let o = spade(&[
        "synthesize",
        "--checkpoint",
        d.to_str().unwrap(),
        "--label",
        d.join("scene.png").to_str().unwrap(),
        "--instance",
        d.join("scene_inst.png").to_str().unwrap(),
        "--output-dir",
        d.join("out").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("latest_net_G.safetensors"), "{err}");
    assert!(err.contains("`fc.weight` has shape [32, 6, 3, 3], but the options build [32, 7, 3, 3]"), "{err}");
    assert!(err.contains("label_nc (now 5)"), "{err}");
}

#[test]
fn label_value_out_of_range_names_file_and_value() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d);
    write_gray(&d.join("bad.png"), 32, 32, |x, _| if x == 3 { 9 } else { 1 });
    let o = spade(&[
        "synthesize",
        "--checkpoint",
        d.to_str().unwrap(),
        "--label",
        d.join("bad.png").to_str().unwrap(),
        "--instance",
        d.join("scene_inst.png").to_str().unwrap(),
        "--output-dir",
        d.join("out").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.png: label value 9 at (x=3, y=0) is outside the valid range 0..=3 or 255"), "{err}");
}

#[test]
fn synthesizes_from_a_training_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = d.join("tiny.yaml");
    std::fs::write(
        &cfg,
        "data: {dataset_mode: synthetic, load_size: 32, crop_size: 32, synthetic_count: 8}\n\
         model: {ngf: 2, ndf: 2, n_layers_D: 2}\nloss: {no_vgg_loss: true}\n\
         train: {batch_size: 2, niter: 1, max_iters: 1, seed: 0}\n",
    )
    .unwrap();
    let run = d.join("run");
    let o = spade(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The synthetic dataset: 14 classes, no don't-care, instance maps.
    write_gray(&d.join("l.png"), 32, 32, |x, y| ((x / 8 + y / 8) % 14) as u8);
    write_gray(&d.join("i.png"), 32, 32, |x, _| (x / 16) as u8);
    let out = d.join("out");
    let o = spade(&[
        "synthesize",
        "--checkpoint",
        run.to_str().unwrap(),
        "--label",
        d.join("l.png").to_str().unwrap(),
        "--instance",
        d.join("i.png").to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(image::open(out.join("l.png")).unwrap().to_rgb8().dimensions(), (32, 32));

    // `spade evaluate` on the same run, without a segmenter or Inception weights: the values it
    // cannot compute are reported as unavailable, not replaced.
    let o = spade(&["evaluate", "--run", run.to_str().unwrap(), "--segmenter", "none", "--num-samples", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["samples"], 4);
    assert!(m["fid"]["value"].is_null() && m["fid"]["unavailable"].as_str().unwrap().contains("Inception"));
    assert!(m["segmentation"]["unavailable"].is_string());
    assert!(m["l1_generated_vs_real"].as_f64().unwrap() > 0.0);
}

fn max_abs(a: &Path, b: &Path) -> f32 {
    let (a, b) = (Tensor::read_npy(a).unwrap(), Tensor::read_npy(b).unwrap());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// Batch synthesis as the reference's test.py: a folder (instances paired by stem, RGB labels
/// through a palette) and a dataset split, in batches, each with a results page.
#[test]
fn folders_and_dataset_splits_in_batches_with_a_results_page() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = d.join("tiny.yaml");
    std::fs::write(
        &cfg,
        "data: {dataset_mode: synthetic, load_size: 32, crop_size: 32, synthetic_count: 8}\n\
         model: {ngf: 2, ndf: 2, n_layers_D: 2}\nloss: {no_vgg_loss: true}\n\
         train: {batch_size: 2, niter: 1, max_iters: 1, seed: 0}\n",
    )
    .unwrap();
    let run = d.join("run");
    let o = spade(&["train", "--config", cfg.to_str().unwrap(), "--output-dir", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The training run's samples page.
    let samples = std::fs::read_to_string(run.join("samples/index.html")).unwrap();
    assert!(samples.contains("iter_00000001.png"), "{samples}");

    let (labels, insts) = (d.join("labels"), d.join("insts"));
    std::fs::create_dir_all(&labels).unwrap();
    std::fs::create_dir_all(&insts).unwrap();
    for k in 0..3u32 {
        write_gray(&labels.join(format!("scene{k}.png")), 32, 32, move |x, y| ((x / 8 + y / 8 + k) % 14) as u8);
        write_gray(&insts.join(format!("scene{k}.png")), 32, 32, |x, _| (x / 16) as u8);
    }
    let folder = |out: &Path, bs: &str| {
        let o = spade(&[
            "synthesize",
            "--checkpoint",
            run.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--instances",
            insts.to_str().unwrap(),
            "--batch-size",
            bs,
            "--raw",
            "--output-dir",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (b1, b2) = (d.join("b1"), d.join("b2"));
    folder(&b1, "1");
    folder(&b2, "2");
    for k in 0..3 {
        let stem = format!("scene{k}");
        assert!(
            max_abs(&b1.join(format!("{stem}.npy")), &b2.join(format!("{stem}.npy"))) < 1e-4,
            "batch size changed {stem}"
        );
        let label = image::open(b2.join(format!("label/{stem}.png"))).unwrap().to_rgb8();
        // Colourised with the synthetic dataset's palette: (0, 0) has class k.
        assert_eq!(label.get_pixel(0, 0).0, spade_data::synthetic::PALETTE[k]);
    }
    let page = std::fs::read_to_string(b2.join("index.html")).unwrap();
    assert_eq!(page.matches("<tr><td class=\"name\">").count(), 3, "{page}");
    assert!(page.contains("src=\"label/scene1.png\"") && page.contains("src=\"scene1.png\""), "{page}");
    assert!(!page.contains("real/"), "no real images for a folder of labels: {page}");
    assert!(!b2.join("real").exists());

    // The same scene as RGB colours through --palette gives the same image.
    let pal = d.join("classes.json");
    spade_synth::palette::Builtin::Synthetic.palette().save(&pal).unwrap();
    let rgb = d.join("rgb");
    std::fs::create_dir_all(&rgb).unwrap();
    image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb(spade_data::synthetic::PALETTE[((x / 8 + y / 8 + 1) % 14) as usize])
    })
    .save(rgb.join("scene1.png"))
    .unwrap();
    let out = d.join("rgb_out");
    let o = spade(&[
        "synthesize",
        "--checkpoint",
        run.to_str().unwrap(),
        "--labels",
        rgb.to_str().unwrap(),
        "--instances",
        insts.to_str().unwrap(),
        "--palette",
        pal.to_str().unwrap(),
        "--raw",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(max_abs(&out.join("scene1.npy"), &b1.join("scene1.npy")) < 1e-6);

    // A dataset split: the first 3 validation scenes, with their real images.
    let ds = d.join("ds");
    let o = spade(&[
        "synthesize",
        "--checkpoint",
        run.to_str().unwrap(),
        "--dataset",
        "synthetic",
        "--split",
        "val",
        "--how-many",
        "3",
        "--batch-size",
        "2",
        "--output-dir",
        ds.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(ds.join("index.html")).unwrap();
    assert_eq!(page.matches("<tr><td class=\"name\">").count(), 3, "{page}");
    assert!(page.contains("<th>real</th>") && page.contains("src=\"real/000002.png\""), "{page}");
    assert_eq!(image::open(ds.join("real/000002.png")).unwrap().to_rgb8().dimensions(), (32, 32));
    assert!(ds.join("000002.png").is_file() && !ds.join("000003.png").exists());

    // A folder without a partner instance map names the file.
    std::fs::remove_file(insts.join("scene2.png")).unwrap();
    let o = spade(&[
        "synthesize",
        "--checkpoint",
        run.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--instances",
        insts.to_str().unwrap(),
        "--output-dir",
        d.join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("scene2.png: no instance map scene2.png"), "{err}");
}
