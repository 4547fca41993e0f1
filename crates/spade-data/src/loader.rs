//! The batch loader: a background thread assembles batches, the samples of each batch loaded in
//! parallel with rayon, and keeps up to `prefetch` batches ready in a bounded channel.
//!
//! Everything random is a pure function of the seed: the order of epoch `e` is a shuffle seeded
//! by `(seed, e)`, and sample `i`'s crop and flip in epoch `e` come from `(seed, e, i)`. The
//! batches are therefore the same whatever the thread count or timing.
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::rng::{hash_seed, Rng};
use crate::Batch;

/// How batches are drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// Random order each epoch (the reference: `not serial_batches`).
    pub shuffle: bool,
    /// Drop the last incomplete batch (the reference: in training).
    pub drop_last: bool,
    pub seed: u64,
    /// Batches kept ready ahead of the consumer.
    pub prefetch: usize,
    pub start_epoch: usize,
    /// Number of epochs to produce; `None`: without end.
    pub epochs: Option<usize>,
}

impl LoaderOptions {
    /// Training defaults: shuffled, last partial batch dropped, 4 batches prefetched, endless.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderOptions { batch_size, shuffle: true, drop_last: true, seed, prefetch: 4, start_epoch: 0, epochs: None }
    }

    /// Evaluation defaults: dataset order, every sample, one epoch.
    pub fn eval(batch_size: usize) -> Self {
        LoaderOptions {
            batch_size,
            shuffle: false,
            drop_last: false,
            seed: 0,
            prefetch: 2,
            start_epoch: 0,
            epochs: Some(1),
        }
    }
}

/// The sample order of one epoch.
pub fn epoch_order(len: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        Rng::new(hash_seed(&[seed, epoch as u64, 0x0de2])).shuffle(&mut order);
    }
    order
}

/// The augmentation seed of sample `index` in `epoch`.
pub fn aug_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    hash_seed(&[seed, epoch as u64, index as u64, 0xa06])
}

/// Batches per epoch.
pub fn batches_per_epoch(len: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last {
        len / batch_size
    } else {
        len.div_ceil(batch_size)
    }
}

/// Loads the given samples in parallel (in order).
pub fn load_batch(dataset: &dyn Dataset, indices: &[usize], seed: u64, epoch: usize) -> Result<Vec<crate::Sample>> {
    indices.par_iter().map(|&i| dataset.load(i, aug_seed(seed, epoch, i))).collect()
}

/// An iterator of batches, produced ahead of time on a background thread.
pub struct BatchLoader {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    batches_per_epoch: usize,
}

impl BatchLoader {
    pub fn new(dataset: Arc<dyn Dataset>, opts: LoaderOptions) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(DataError::Config { option: "batch_size", value: "0".into(), expected: "at least 1".into() });
        }
        let len = dataset.len();
        let per_epoch = batches_per_epoch(len, opts.batch_size, opts.drop_last);
        if per_epoch == 0 {
            return Err(DataError::Config {
                option: "batch_size",
                value: opts.batch_size.to_string(),
                expected: format!("at most the dataset size {len} (with drop_last)"),
            });
        }
        let (tx, rx) = sync_channel(opts.prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("spade-data-loader".into())
            .spawn(move || {
                let mut epoch = opts.start_epoch;
                loop {
                    if let Some(n) = opts.epochs {
                        if epoch >= opts.start_epoch + n {
                            return;
                        }
                    }
                    let order = epoch_order(len, opts.seed, epoch, opts.shuffle);
                    for (step, chunk) in order.chunks(opts.batch_size).take(per_epoch).enumerate() {
                        let batch = load_batch(dataset.as_ref(), chunk, opts.seed, epoch).map(|samples| Batch {
                            samples,
                            indices: chunk.to_vec(),
                            epoch,
                            step,
                        });
                        let failed = batch.is_err();
                        if tx.send(batch).is_err() || failed {
                            return;
                        }
                    }
                    epoch += 1;
                }
            })
            .expect("spawn the loader thread");
        Ok(BatchLoader { rx: Some(rx), handle: Some(handle), batches_per_epoch: per_epoch })
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.batches_per_epoch
    }
}

impl Iterator for BatchLoader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it ends.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
