//! The paper's evaluation protocol on real images: Table 3's smoke profile (the `spade` row)
//! on the reference's COCO-Stuff sample (`../shared/data/coco_stuff_sample`), scored by
//! DeepLabV2-ResNet101 MSC with weights this test writes as a `.pth` (random init, read back
//! through the reader users' files go through) and FID with
//! `../shared/fixtures/fid/pt_inception_random.pth`. The files are resolved before training
//! (a missing one stops the run first); mIoU, accuracy and FID in `metrics.json` are numbers,
//! and `eval_protocol.json` marks them as coming from test weights.
//! `cargo test --release -p spade-train --features shared-fixtures --test shared_paper_protocol`.
use std::path::{Path, PathBuf};

use candle_core::Device;
use spade_metrics::deeplabv2::{DeepLabV2, DeepLabV2Config, DEEPLABV2_COCOSTUFF_FILE};
use spade_metrics::segnet;
use spade_train::config::ExperimentConfig;
use spade_train::evaluate::{evaluate_run, FidNet};
use spade_train::protocol::{
    eval_label_size, resolve_evaluation, EvalFlags, FidRequirement, ProtocolError, SegmenterKind,
};
use spade_train::run::{train, RunOptions};

fn shared() -> PathBuf {
    let p = std::env::var_os("SPADE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    assert!(p.join("data/coco_stuff_sample").is_dir(), "the shared data are missing: {}", p.display());
    p
}

/// Table 3's base config with its smoke profile and the `spade` row, on a COCO-Stuff root.
fn table3_smoke_on(root: &Path) -> ExperimentConfig {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/table3.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let table: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let base = serde_yaml_ng::to_string(&table["base"]).unwrap();
    let strings = |v: &serde_yaml_ng::Value| -> Vec<String> {
        v.as_sequence().unwrap_or(&vec![]).iter().map(|s| s.as_str().expect("a --set string").to_string()).collect()
    };
    let mut sets: Vec<String> = strings(&table["profiles"]["smoke"]["set"]);
    assert!(!sets.is_empty(), "{}: no smoke profile", file.display());
    sets.retain(|s| !s.starts_with("data.synthetic_count"));
    sets.push("data.dataset_mode=coco".into());
    sets.push(format!("data.dataroot={}", root.display()));
    let row = table["rows"].as_sequence().unwrap().iter().find(|r| r["id"].as_str() == Some("spade")).unwrap();
    sets.extend(strings(&row["set"]));
    sets.push("name=table3/spade".into());
    ExperimentConfig::from_yaml(&base, &sets).unwrap()
}

fn number(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_f64().unwrap_or_else(|| panic!("{} is not a number in {v}", path.join(".")))
}

#[test]
fn coco_sample_smoke_run_is_scored_with_the_papers_segmenter_and_fid() {
    let shared = shared();
    let dev = Device::Cpu;
    let cfg = table3_smoke_on(&shared.join("data/coco_stuff_sample"));
    let tmp = tempfile::tempdir().unwrap();

    // DeepLabV2-ResNet101 (COCO-Stuff, 182 classes) with random weights, written as a .pth.
    let weights = tmp.path().join(DEEPLABV2_COCOSTUFF_FILE);
    let (_, sd) = segnet::random_state_dict(7, &dev, segnet::TORCH_BN_BUFFERS, |vb| {
        DeepLabV2::new(&DeepLabV2Config::cocostuff164k(), vb)
    })
    .unwrap();
    spade_io::pth::save(&weights, &sd).unwrap();
    drop(sd);
    let fid_weights = shared.join("fixtures/fid/pt_inception_random.pth");

    // A missing file stops the evaluation setup, before any training, naming it.
    let missing = EvalFlags {
        segmenter_weights: vec![weights.clone()],
        fid_weights: Some(tmp.path().join("pt_inception-2015-12-05-6726825d.pth")),
        ..EvalFlags::default()
    };
    let e = resolve_evaluation(cfg.data.dataset_mode, &missing, FidRequirement::Required).unwrap_err();
    assert!(matches!(e, ProtocolError::Missing(_)) && e.to_string().contains("pt_inception-2015-12-05"), "{e}");

    let flags = EvalFlags { segmenter_weights: vec![weights], fid_weights: Some(fid_weights), ..EvalFlags::default() };
    let setup = resolve_evaluation(cfg.data.dataset_mode, &flags, FidRequirement::Required).unwrap();
    assert_eq!(setup.segmenter, SegmenterKind::DeepLabV2);
    let segmenter = setup.open_segmenter(eval_label_size(&cfg.data).unwrap(), None, &dev).unwrap().unwrap();
    let (inception, sha) = setup.open_fid(&dev).unwrap().unwrap();

    let run = tmp.path().join("run");
    let ro = RunOptions {
        output_dir: run.clone(),
        resume: false,
        max_iters: None,
        progress: false,
        device: dev.clone(),
        job: None,
    };
    let summary = train(&cfg, &ro).unwrap();
    assert_eq!(summary.iterations, 2);
    let fid = FidNet { net: &inception, weights_sha256: sha };
    evaluate_run(&run, &cfg, Some(segmenter.as_ref()), Some(fid), &dev).unwrap();
    setup.write(&run).unwrap();

    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    let seg = &m["segmentation"];
    for side in ["generated", "real_images"] {
        for dc in ["dontcare_ignore", "dontcare_count"] {
            let miou = number(seg, &[side, dc, "mIoU"]);
            let acc = number(seg, &[side, dc, "accuracy"]);
            assert!((0.0..=1.0).contains(&miou) && (0.0..=1.0).contains(&acc), "{side} {dc}: {miou} {acc}");
        }
    }
    assert!(seg["protocol"]["segmenter"].as_str().unwrap().starts_with("deeplabv2-resnet101-msc"));
    assert_eq!(seg["protocol"]["num_classes"], 182);
    assert_eq!(seg["protocol"]["input_resolution"], serde_json::json!([32, 32]));
    let fid_value = number(&m, &["fid", "value"]);
    assert!(fid_value.is_finite() && fid_value >= 0.0, "FID {fid_value}");
    assert_eq!(m["samples"], 4);

    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spade_train::layout::RunDir::new(&run).eval_protocol()).unwrap())
            .unwrap();
    assert_eq!(p["test_weights"], true);
    assert_eq!(p["fid_weights"]["released_weights"], false);
    assert_eq!(p["segmenter_weights"][0]["released_weights"], false);
    assert_eq!(p["protocol"]["dataset"], "coco-stuff");
    assert_eq!(p["protocol"]["segmenter"], "deeplabv2");
    assert_eq!(p["segmenter_weights"][0]["sha256"], seg["protocol"]["weights_sha256"]);
    println!(
        "coco sample, smoke: mIoU {:.4} accuracy {:.4} (generated, don't care ignored), FID {fid_value:.2}",
        number(seg, &["generated", "dontcare_ignore", "mIoU"]),
        number(seg, &["generated", "dontcare_ignore", "accuracy"])
    );
}
