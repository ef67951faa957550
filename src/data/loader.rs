//! Batches for one epoch, in a seeded order, resized on a background thread so the next batch is ready
//! when the current training step ends.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use super::Dataset;
use super::augment::Augmentation;
use super::transforms::{Normalization, resize_bilinear};
use crate::error::Result;
use crate::reduction::Sharding;

/// One batch, resized: `labels.len()` images of `channels * size[0] * size[1]` values.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position of the batch in its epoch.
    pub index: usize,
    /// NCHW values.
    pub images: Vec<f32>,
    /// Labels.
    pub labels: Vec<usize>,
}

/// The order of an epoch's images: shuffled from `(seed, epoch)`, or as stored.
pub fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        // A distinct, reproducible stream per epoch.
        let mut rng = fastrand::Rng::with_seed(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.shuffle(&mut order);
    }
    order
}

/// How each image becomes a network input: augmented at its stored size (with draws from
/// `(seed, epoch, image)`), resized to `size`, then normalized.
#[derive(Debug, Clone)]
pub struct Prep {
    /// The network's input size.
    pub size: [usize; 2],
    /// Training augmentation.
    pub augment: Augmentation,
    /// Per-channel normalization after the resize.
    pub normalization: Option<Normalization>,
    /// The run's seed.
    pub seed: u64,
    /// The epoch (0-based).
    pub epoch: usize,
}

/// Yields the batches of one epoch (the last one may be smaller), starting at batch `first`, prepared
/// on a background thread two batches ahead; a batch whose buffer cannot be allocated is an error, and
/// the last item.
pub struct Loader {
    receiver: Receiver<Result<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts preparing batches of `batch` images from `data` in `order`, from batch `first` on, as
    /// `prep` says.
    pub fn new(data: Arc<Dataset>, order: Vec<usize>, batch: usize, first: usize, prep: Prep) -> Loader {
        Loader::sharded(data, order, batch, first, prep, Sharding::single(1))
    }

    /// [`Loader::new`] for rank `shard.0` of `shard.1` in data-parallel training: of each global batch
    /// of `batch` images, only the images of this rank's shard ([`Sharding::shard`]) are
    /// read and prepared.
    pub fn sharded(
        data: Arc<Dataset>,
        order: Vec<usize>,
        batch: usize,
        first: usize,
        prep: Prep,
        sharding: Sharding,
    ) -> Loader {
        let Prep {
            size,
            augment,
            normalization,
            seed,
            epoch,
        } = prep;
        let (sender, receiver) = sync_channel(2);
        let worker = std::thread::spawn(move || {
            let [c, h, w] = data.shape;
            let out_len = c * size[0] * size[1];
            let mut augmented = vec![0.0; data.image_len()];
            for (index, global) in order.chunks(batch.max(1)).enumerate().skip(first) {
                let chunk = &global[sharding.shard(global.len()).images()];
                let mut images = match crate::memory::zeroed(chunk.len() * out_len, "a batch of input images") {
                    Ok(images) => images,
                    Err(e) => {
                        let _ = sender.send(Err(e));
                        return;
                    }
                };
                for (&i, dst) in chunk.iter().zip(images.chunks_exact_mut(out_len)) {
                    let mut src = &data.images[i * data.image_len()..][..data.image_len()];
                    if !augment.is_identity() {
                        augment.apply(src, data.shape, &mut augmented, &mut Augmentation::rng(seed, epoch, i));
                        src = &augmented;
                    }
                    resize_bilinear(src, c, [h, w], dst, size, data.from_bytes);
                    if let Some(n) = &normalization {
                        n.apply(dst);
                    }
                }
                let labels = chunk.iter().map(|&i| data.labels[i]).collect();
                if sender.send(Ok(Batch { index, images, labels })).is_err() {
                    return; // The consumer stopped early.
                }
            }
        });
        Loader {
            receiver,
            worker: Some(worker),
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        self.receiver.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the worker by dropping the receiver side first, then wait for it.
        let (_, empty) = sync_channel(0);
        self.receiver = empty;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
