//! Training runs on the built-in synthetic dataset: exact resume, non-finite loss handling,
//! and checkpoints that survive an interrupted write.
use candle_core::Device;
use spade_train::config::ExperimentConfig;
use spade_train::run::{latest_checkpoint, train, RunOptions, TrainError};
use std::path::Path;

const TINY: &str = "
data:
  dataset_mode: synthetic
  load_size: 32
  crop_size: 32
  synthetic_count: 16
model:
  ngf: 4
  ndf: 4
  num_D: 2
  n_layers_D: 3
loss:
  no_vgg_loss: true
train:
  batch_size: 2
  niter: 1
  save_latest_freq: 2
  display_freq: 2
  seed: 3
";

fn opts(dir: &Path, resume: bool, max_iters: usize) -> RunOptions {
    RunOptions {
        output_dir: dir.to_path_buf(),
        resume,
        max_iters: Some(max_iters),
        progress: false,
        device: Device::Cpu,
        job: None,
    }
}

fn weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let dir = latest_checkpoint(run).expect("a checkpoint");
    let mut out = Vec::new();
    for net in ["G", "D"] {
        for (k, t) in spade_io::checkpoint::load_state_dict(&dir.join(format!("latest_net_{net}.safetensors"))).unwrap()
        {
            let t = t.to_dtype(candle_core::DType::F32).unwrap();
            out.push((format!("{net}.{k}"), t.flatten_all().unwrap().to_vec1().unwrap()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let cfg = ExperimentConfig::from_yaml(TINY, &[]).unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    train(&cfg, &opts(a.path(), false, 4)).unwrap();
    train(&cfg, &opts(b.path(), false, 2)).unwrap();
    // A second fresh start into the same directory is refused.
    let e = train(&cfg, &opts(b.path(), false, 2)).unwrap_err().to_string();
    assert!(e.contains("--resume"), "{e}");
    let s = train(&cfg, &opts(b.path(), true, 4)).unwrap();
    assert_eq!(s.iterations, 4);
    let (wa, wb) = (weights(a.path()), weights(b.path()));
    assert_eq!(wa.len(), wb.len());
    for ((ka, va), (kb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(ka, kb);
        let d = va.iter().zip(vb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d == 0.0, "{ka}: resumed weights differ by {d}");
    }
    // The loss log has each iteration once.
    let log = std::fs::read_to_string(b.path().join("losses.jsonl")).unwrap();
    let iters: Vec<u64> =
        log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["iter"].as_u64().unwrap()).collect();
    assert_eq!(iters, vec![0, 1, 2, 3]);
    assert!(b.path().join("samples/iter_00000004.png").is_file());
    // The run directory works as a synthesize checkpoint: opt.txt sits with the weights.
    assert!(latest_checkpoint(b.path()).unwrap().join("opt.txt").is_file());
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let good = ExperimentConfig::from_yaml(TINY, &[]).unwrap();
    // (A NaN weight is out of range for a config file, so it is set directly.)
    let mut bad = good.clone();
    bad.loss.lambda_feat = f64::NAN;
    let dir = tempfile::tempdir().unwrap();
    train(&good, &opts(dir.path(), false, 2)).unwrap();
    let before = weights(dir.path());
    // Continue the same run with a config that poisons the feature-matching term.
    std::fs::write(dir.path().join("config.yaml"), bad.to_yaml()).unwrap();
    let e = train(&bad, &opts(dir.path(), true, 4)).unwrap_err();
    assert!(matches!(e, TrainError::NonFinite { iteration: 2, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("iteration 2: loss GAN_Feat is NaN"), "{msg}");
    assert!(msg.contains("iter_00000002"), "{msg}");
    assert_eq!(weights(dir.path()), before, "the last good checkpoint is intact");
}

#[test]
fn interrupted_checkpoint_write_leaves_the_previous_one_loadable() {
    let cfg = ExperimentConfig::from_yaml(TINY, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    train(&cfg, &opts(dir.path(), false, 2)).unwrap();
    // A crash in the middle of writing checkpoint 4: a partial temporary directory, and a
    // checkpoint directory without its state file.
    let ck = dir.path().join("checkpoints");
    std::fs::create_dir_all(ck.join(".tmp_iter_00000004")).unwrap();
    std::fs::write(ck.join(".tmp_iter_00000004/latest_net_G.safetensors"), b"partial").unwrap();
    assert_eq!(latest_checkpoint(dir.path()).unwrap(), ck.join("iter_00000002"));
    let s = train(&cfg, &opts(dir.path(), true, 4)).unwrap();
    assert_eq!(s.iterations, 4);
    assert_eq!(latest_checkpoint(dir.path()).unwrap(), ck.join("iter_00000004"));
    assert!(!ck.join(".tmp_iter_00000004").exists());
}

#[test]
fn vgg_weights_from_a_hub_cache_are_used_and_recorded() {
    // A hub cache laid out as hf-hub lays it out, holding random VGG19 weights.
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("hub/models--org--vgg19/snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(tmp.path().join("hub/models--org--vgg19/refs")).unwrap();
    std::fs::write(tmp.path().join("hub/models--org--vgg19/refs/main"), "0123abcd").unwrap();
    let store = spade_models::ParamStore::fresh(9, candle_core::DType::F32, &Device::Cpu);
    spade_models::loss::Vgg19::new(&store.root()).unwrap();
    spade_io::checkpoint::save_safetensors(&snap.join("model.safetensors"), &store.state_dict()).unwrap();
    std::env::set_var("HF_HOME", tmp.path());
    let cfg = ExperimentConfig::from_yaml(
        TINY,
        &["loss.no_vgg_loss=false".into(), "loss.vgg_weights_hub=org/vgg19:model.safetensors".into()],
    )
    .unwrap();
    let run = tmp.path().join("run");
    train(&cfg, &opts(&run, false, 1)).unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["vgg_loss"], true);
    assert_eq!(info["vgg_weights"]["sha256"].as_str().unwrap().len(), 64);
    let log = std::fs::read_to_string(run.join("losses.jsonl")).unwrap();
    assert!(log.contains("\"VGG\""), "{log}");
    // Without weights and without saying no_vgg_loss, training refuses to start.
    let bare = ExperimentConfig::from_yaml(TINY, &["loss.no_vgg_loss=false".into()]).unwrap();
    let e = train(&bare, &opts(&tmp.path().join("run2"), false, 1)).unwrap_err().to_string();
    assert!(e.contains("loss.no_vgg_loss: true"), "{e}");
}

#[test]
fn noise_input_generator_trains_without_an_encoder() {
    // Table 4's "noise" input: z ~ N(0, 1) through fc, no style encoder (so any crop size).
    let cfg =
        ExperimentConfig::from_yaml(TINY, &["model.use_vae=true".into(), "model.no_encoder=true".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    train(&cfg, &opts(dir.path(), false, 1)).unwrap();
    let ck = latest_checkpoint(dir.path()).unwrap();
    assert!(!ck.join("latest_net_E.safetensors").exists());
    let g = spade_io::checkpoint::load_state_dict(&ck.join("latest_net_G.safetensors")).unwrap();
    let fc = g.iter().find(|(k, _)| k == "fc.weight").unwrap();
    assert_eq!(fc.1.dims(), &[16 * 4, 256], "fc is Linear(z_dim -> 16 ngf * 1 * 1)");
    let log = std::fs::read_to_string(dir.path().join("losses.jsonl")).unwrap();
    assert!(!log.contains("KLD"), "no encoder, no KLD: {log}");
}
