//! Loader throughput: `cargo run -p spade-data --release --example bench_loader -- [COCO_ROOT]`
//! (default `$SPADE_SHARED/data/coco_stuff_sample`, else `../shared/...` beside the repo).
//! Prints batches/s of 256x256 batches of 8 (COCO-Stuff train defaults: load 286, random crop
//! 256, flip) through the prefetching loader on all cores, the single-thread cost per sample,
//! and the same for the synthetic dataset at 256x256.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use spade_data::{open, BatchLoader, Dataset, DatasetConfig, DatasetMode, LoaderOptions};

fn bench(name: &str, ds: Arc<dyn Dataset>, batches: usize) {
    // Single thread, one pass over (up to) 32 samples.
    let n = ds.len().min(32);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let t = Instant::now();
    pool.install(|| {
        for i in 0..n {
            ds.load(i, i as u64).unwrap();
        }
    });
    let per_sample = t.elapsed().as_secs_f64() / n as f64;
    // The loader, all threads.
    let mut loader = BatchLoader::new(Arc::clone(&ds), LoaderOptions::train(8, 0)).unwrap();
    loader.next().unwrap().unwrap(); // warm up
    let t = Instant::now();
    for _ in 0..batches {
        let b = loader.next().unwrap().unwrap();
        assert_eq!(b.len(), 8);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{name}: {:.1} ms/sample on 1 thread ({:.0} samples/s); loader on {} threads: {:.2} batches/s of 8 ({:.0} samples/s)",
        per_sample * 1e3,
        1.0 / per_sample,
        rayon::current_num_threads(),
        batches as f64 / secs,
        8.0 * batches as f64 / secs
    );
}

fn main() {
    let root = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("SPADE_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
            .join("data/coco_stuff_sample")
    });
    let coco = open(&DatasetConfig::new(DatasetMode::Coco, Some(root))).expect("open COCO-Stuff");
    bench("coco-stuff 256 (load 286, crop 256)", coco, 30);
    let mut s = DatasetConfig::new(DatasetMode::Synthetic, None);
    s.crop_size = Some(256);
    bench("synthetic 256", open(&s).unwrap(), 60);
    s.crop_size = Some(64);
    bench("synthetic 64", open(&s).unwrap(), 200);
}
