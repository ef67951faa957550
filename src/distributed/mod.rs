//! Data-parallel training across processes: each process (a *rank*) trains on its shard of every global
//! batch, the ranks' gradients are summed once per step, and every rank applies the same optimizer step
//! to the same weights, so the weights stay identical on all of them. [`Cluster`] is what training needs
//! from the processes; [`SingleProcess`] is the usual one-process run, and with the `mpi` feature
//! [`mpi::MpiCluster`] runs over MPI (`mpirun -np N incept train ...`).

#[cfg(feature = "mpi")]
pub mod mpi;

use crate::error::Result;
use std::ops::Range;

/// The processes a training run spans.
pub trait Cluster {
    /// This process's index, 0 to `size() - 1`. Rank 0 alone prints, evaluates and writes files.
    fn rank(&self) -> usize;
    /// How many processes train together.
    fn size(&self) -> usize;
    /// Writes into `sums` the elementwise sum of every rank's `values` (the same length on every
    /// rank); each rank ends with the same bits. The caller owns both buffers, so a step allocates
    /// nothing. `what` names the collective in errors (a rank that stopped answering, say).
    fn sum_f32(&self, values: &[f32], sums: &mut [f32], what: &str) -> Result<()>;
    /// [`Cluster::sum_f32`] for float64 values (the step's loss and counts).
    fn sum_f64(&self, values: &[f64], sums: &mut [f64], what: &str) -> Result<()>;
}

/// One process: every sum is the value itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Cluster for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, values: &[f32], sums: &mut [f32], _: &str) -> Result<()> {
        sums.copy_from_slice(values);
        Ok(())
    }
    fn sum_f64(&self, values: &[f64], sums: &mut [f64], _: &str) -> Result<()> {
        sums.copy_from_slice(values);
        Ok(())
    }
}

/// The images of a global batch of `len` that rank `rank` of `size` trains on: contiguous, in batch
/// order, with sizes that differ by at most one (a rank may get none of a short last batch).
pub fn shard(len: usize, rank: usize, size: usize) -> Range<usize> {
    (rank * len / size)..((rank + 1) * len / size)
}

#[cfg(test)]
mod tests {
    use super::shard;

    #[test]
    fn shards_cover_the_batch_once_in_order() {
        for len in 0..20 {
            for size in 1..6 {
                let shards: Vec<_> = (0..size).map(|rank| shard(len, rank, size)).collect();
                let covered: Vec<usize> = shards.iter().cloned().flatten().collect();
                assert_eq!(covered, (0..len).collect::<Vec<_>>(), "len {len}, size {size}");
                let sizes: Vec<usize> = shards.iter().map(|s| s.len()).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "len {len}, size {size}: {sizes:?}");
            }
        }
    }
}
