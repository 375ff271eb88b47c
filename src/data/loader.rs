//! Batches in order, read either in line or by a background thread that keeps up to
//! `prefetch_buffer_size` batches ready while the model computes.
//!
//! The background thread stops when the consumer drops the loader (end of epoch,
//! an error, Ctrl-C unwinding the training loop): dropping sets a stop flag, closes
//! the channel so a blocked send returns, and joins the thread. A loader error reaches
//! the consumer as the next item, with the samples it was reading in its context.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;

use super::batch::{Batch, BatchAssembler};
use super::dataset::Dataset;
use super::samples::WindowSpec;
use super::stats::NormStats;

/// Whether and how far to read ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    Off,
    /// Background thread with a bounded queue of this many batches.
    Buffer(usize),
}

/// An iterator of batches over `order` (sample `t0`s, already shuffled if wanted).
pub enum BatchLoader {
    InLine {
        assembler: BatchAssembler,
        chunks: std::vec::IntoIter<Vec<usize>>,
    },
    Background {
        rx: Option<Receiver<anyhow::Result<Batch>>>,
        stop: Arc<AtomicBool>,
        worker: Option<JoinHandle<()>>,
    },
}

impl BatchLoader {
    /// Batches of `window` samples with `rollout_steps` targets each (1: one step).
    pub fn new(
        dataset: Arc<Dataset>,
        stats: Arc<NormStats>,
        window: (WindowSpec, usize),
        order: &[usize],
        batch_size: usize,
        prefetch: Prefetch,
    ) -> anyhow::Result<BatchLoader> {
        anyhow::ensure!(batch_size > 0, "batch size must be at least 1");
        let chunks = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
        BatchLoader::from_chunks(dataset, stats, window, chunks, prefetch)
    }

    /// One batch per chunk of sample `t0`s, in order; an empty chunk gives an empty
    /// batch (a data-parallel rank whose share of a global batch is empty).
    pub fn from_chunks(
        dataset: Arc<Dataset>,
        stats: Arc<NormStats>,
        window: (WindowSpec, usize),
        chunks: Vec<Vec<usize>>,
        prefetch: Prefetch,
    ) -> anyhow::Result<BatchLoader> {
        let largest = chunks.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let assembler = BatchAssembler::new(dataset, stats, window, largest);
        BatchLoader::from_assembler(assembler, chunks, prefetch)
    }

    /// One batch per chunk, assembled by `assembler` (in line, or on the prefetch
    /// thread).
    pub fn from_assembler(
        mut assembler: BatchAssembler,
        chunks: Vec<Vec<usize>>,
        prefetch: Prefetch,
    ) -> anyhow::Result<BatchLoader> {
        match prefetch {
            Prefetch::Off => Ok(BatchLoader::InLine {
                assembler,
                chunks: chunks.into_iter(),
            }),
            Prefetch::Buffer(size) => {
                let (tx, rx) = sync_channel(size.max(1));
                let stop = Arc::new(AtomicBool::new(false));
                let stop_flag = stop.clone();
                let worker = std::thread::Builder::new()
                    .name("meshcast-prefetch".into())
                    .spawn(move || {
                        for chunk in chunks {
                            if stop_flag.load(Ordering::Relaxed) {
                                return;
                            }
                            let item = assembler.assemble(&chunk).with_context(|| describe(&chunk));
                            let failed = item.is_err();
                            if tx.send(item).is_err() || failed {
                                return;
                            }
                        }
                    })
                    .context("cannot start the prefetch thread")?;
                Ok(BatchLoader::Background {
                    rx: Some(rx),
                    stop,
                    worker: Some(worker),
                })
            }
        }
    }
}

fn describe(chunk: &[usize]) -> String {
    format!("loading the batch of samples ending at time steps {chunk:?}")
}

impl Iterator for BatchLoader {
    type Item = anyhow::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            BatchLoader::InLine { assembler, chunks } => {
                let chunk = chunks.next()?;
                Some(assembler.assemble(&chunk).with_context(|| describe(&chunk)))
            }
            BatchLoader::Background { rx, worker, .. } => match rx.as_ref()?.recv() {
                Ok(item) => Some(item),
                // Channel closed: either all batches were sent, or the thread died.
                Err(_) => {
                    rx.take();
                    match worker.take().map(JoinHandle::join) {
                        Some(Err(_)) => Some(Err(anyhow::anyhow!("the prefetch thread panicked"))),
                        _ => None,
                    }
                }
            },
        }
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        if let BatchLoader::Background { rx, stop, worker } = self {
            stop.store(true, Ordering::Relaxed);
            drop(rx.take());
            if let Some(w) = worker.take() {
                let _ = w.join();
            }
        }
    }
}
