//! Run-directory safety through the `spade` binary: a training SIGKILLed at random points and
//! resumed finishes with every iteration logged exactly once and a loadable `latest`; a second
//! training into the same directory is refused naming the holder; leftover checkpoints
//! without `latest` are found and said so; bad config values end with one line and status 1.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TINY: &str = "
data:
  dataset_mode: synthetic
  load_size: 32
  crop_size: 32
  synthetic_count: 16
model:
  ngf: 4
  ndf: 4
  num_D: 1
  n_layers_D: 2
loss:
  no_vgg_loss: true
train:
  batch_size: 2
  niter: 100
  save_latest_freq: 3
  display_freq: 0
  seed: 5
";

fn spade() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spade"));
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn train_cmd(cfg: &Path, run: &Path, resume: bool, iters: usize) -> Command {
    let mut c = spade();
    // The error is checked as a user sees it: no backtrace appended (RUST_BACKTRACE may be set).
    c.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    c.args(["train", "--quiet", "--config"]).arg(cfg).arg("--output-dir").arg(run);
    c.args(["--max-iters", &iters.to_string()]);
    if resume {
        c.arg("--resume");
    }
    c
}

/// The `iter` of every line of the loss log (the file must end with a newline).
fn logged_iterations(run: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(run.join("losses.jsonl")).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "partial last line: {:?}", text.lines().last());
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["iter"].as_u64().unwrap()).collect()
}

#[test]
fn sigkilled_training_resumes_to_the_end_with_every_iteration_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.yaml");
    std::fs::write(&cfg, TINY).unwrap();
    let run = dir.path().join("run");
    let total = 30;
    // Deterministic "random" kill points (an LCG), from start-up to mid-run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    let mut rounds = 0;
    let t0 = Instant::now();
    while kills < 6 && rounds < 20 {
        rounds += 1;
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(150 + (state >> 33) % 1200);
        let resume = spade_train::run::latest_checkpoint(&run).is_some();
        let mut child =
            train_cmd(&cfg, &run, resume, total).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let start = Instant::now();
        let mut finished = None;
        while start.elapsed() < delay {
            if let Some(st) = child.try_wait().unwrap() {
                finished = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match finished {
            Some(st) => {
                let out = child.wait_with_output().unwrap();
                assert!(st.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
                break;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    assert!(kills >= 3, "only {kills} kills landed before the run finished");
    // Resume to the end.
    let resume = spade_train::run::latest_checkpoint(&run).is_some();
    let out = train_cmd(&cfg, &run, resume, total).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let latest = spade_train::run::latest_checkpoint(&run).expect("latest");
    assert!(latest.ends_with(format!("iter_{total:08}")), "{}", latest.display());
    let g = spade_io::checkpoint::load_state_dict(&latest.join("latest_net_G.safetensors")).unwrap();
    assert!(!g.is_empty());
    let iters = logged_iterations(&run);
    assert_eq!(iters, (0..total as u64).collect::<Vec<_>>(), "after {kills} kills");
    // No temporaries left behind.
    for d in [run.clone(), run.join("checkpoints")] {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            assert!(!n.contains(".tmp"), "left over: {n}");
        }
    }
    eprintln!("{kills} kills in {rounds} rounds, {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn second_training_into_the_same_directory_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.yaml");
    std::fs::write(&cfg, TINY).unwrap();
    let run = dir.path().join("run");
    let mut first = train_cmd(&cfg, &run, false, 100_000).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let pid = first.id();
    let t0 = Instant::now();
    while std::fs::read_to_string(run.join(".lock")).map(|s| s.trim() != pid.to_string()).unwrap_or(true) {
        assert!(t0.elapsed() < Duration::from_secs(60), "the first run never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    for resume in [false, true] {
        let out = train_cmd(&cfg, &run, resume, 10).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("process {pid}")) && err.contains(&run.display().to_string()), "{err}");
    }
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn leftover_checkpoints_without_latest_are_used_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.yaml");
    std::fs::write(&cfg, TINY).unwrap();
    let run = dir.path().join("run");
    let out = train_cmd(&cfg, &run, false, 6).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(run.join("latest")).unwrap();
    // A fresh run would overwrite them: refused.
    let out = train_cmd(&cfg, &run, false, 1).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--resume"), "{err}");
    // --resume finds the newest complete checkpoint, says so, and continues.
    let out = train_cmd(&cfg, &run, true, 9).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("is missing") && err.contains("iter_00000006"), "{err}");
    let names: Vec<String> = spade_train::rundir::checkpoint_names(&run);
    assert_eq!(names, ["iter_00000006", "iter_00000009"]);
    assert_eq!(std::fs::read_to_string(run.join("latest")).unwrap().trim(), "iter_00000009");
    assert_eq!(logged_iterations(&run), (0..9).collect::<Vec<_>>());
}

#[test]
fn bad_config_values_end_with_status_1_and_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.yaml");
    std::fs::write(&cfg, TINY).unwrap();
    for (set, key) in [
        ("train.batch_size=0", "train.batch_size = 0"),
        ("model.init_variance=.inf", "model.init_variance = inf"),
        ("model.num_D=0", "model.num_D = 0"),
    ] {
        let run = dir.path().join("never");
        let out = train_cmd(&cfg, &run, false, 1).args(["--set", set]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{set}: {err}");
        assert!(err.contains(key) && err.trim().lines().count() == 1, "{set}: {err}");
        assert!(!run.exists(), "{set}: the run directory was created");
    }
}
