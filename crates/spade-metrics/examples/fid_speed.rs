//! Feature-extraction speed of the FID Inception (images per second), 256x256 inputs.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p spade-metrics --example fid_speed -- [WEIGHTS.pth]
//! [--batch N] [--images N] [--cuda]`. Without a weights file the network runs on zero weights
//! (the speed does not depend on the values).
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use spade_metrics::{load_fid_inception, FidInception};

/// User + system CPU seconds of this process (Linux `/proc/self/stat`, 100 ticks/s), to tell
/// the cost apart from waiting on a busy machine.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut weights = None;
    let mut batch = 8usize;
    let mut images = 32usize;
    let mut cuda = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--batch" => batch = args.next().ok_or("--batch N")?.parse()?,
            "--images" => images = args.next().ok_or("--images N")?.parse()?,
            "--cuda" => cuda = true,
            _ => weights = Some(std::path::PathBuf::from(a)),
        }
    }
    let device = if cuda { Device::new_cuda(0)? } else { Device::Cpu };
    let net = match &weights {
        Some(p) => load_fid_inception(p, &device)?,
        None => FidInception::load(VarBuilder::zeros(DType::F32, &device))?,
    };
    let x = Tensor::rand(0f32, 1f32, (batch, 3, 256, 256), &device)?;
    // Warm-up.
    let _ = net.pool3(&x)?.to_device(&Device::Cpu)?;
    let runs = images.div_ceil(batch);
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    for _ in 0..runs {
        let f = net.pool3(&x)?.to_device(&Device::Cpu)?;
        assert_eq!(f.dims(), &[batch, 2048]);
    }
    let dt = t.elapsed().as_secs_f64();
    let n = runs * batch;
    if let (Some(a), Some(b)) = (cpu0, cpu_seconds()) {
        println!(
            "CPU time {:.2} s ({:.3} CPU-s per image; wall/CPU ratio shows machine contention)",
            b - a,
            (b - a) / n as f64
        );
    }
    println!(
        "{n} images of 256x256 in {dt:.2} s: {:.2} images/s (batch {batch}, device {:?}, rayon threads {})",
        n as f64 / dt,
        device,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
    );
    Ok(())
}
