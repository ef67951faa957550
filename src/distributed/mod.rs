//! Data-parallel training across processes: each process (a *rank*) trains on its shard of every global
//! batch, the ranks' gradients are summed once per step, and every rank applies the same optimizer step
//! to the same weights, so the weights stay identical on all of them. [`Cluster`] is what training needs
//! from the processes; [`SingleProcess`] is the usual one-process run, and with the `mpi` feature
//! [`mpi::MpiCluster`] runs over MPI (`mpirun -np N incept train ...`).

#[cfg(feature = "mpi")]
pub mod mpi;

use crate::error::Result;

/// The processes a training run spans.
pub trait Cluster {
    /// This process's index, 0 to `size() - 1`. Rank 0 alone prints, evaluates and writes files.
    fn rank(&self) -> usize;
    /// How many processes train together.
    fn size(&self) -> usize;
    /// Writes into `sums` the elementwise sum of every rank's `values` (the same length on every
    /// rank); each rank ends with the same bits. With a power-of-two number of ranks the sum is
    /// associated as the aligned pairwise tree over ranks (0+1, 2+3, then (0+1)+(2+3), ...), the
    /// order [`crate::reduction`] sums a batch's gradient groups in, so ranks holding aligned
    /// subtrees of groups end with one process's bits. The caller owns both buffers, so a step
    /// allocates nothing. `what` names the collective in errors (a rank that stopped answering, say).
    fn sum_f32(&self, values: &[f32], sums: &mut [f32], what: &str) -> Result<()>;
    /// [`Cluster::sum_f32`] for float64 values (the step's loss and counts, synchronized batch norms'
    /// sums), in the same order.
    fn sum_f64(&self, values: &[f64], sums: &mut [f64], what: &str) -> Result<()>;
}

/// Whether this process was started by an MPI launcher (`mpirun`, `srun`): then `incept train` joins
/// the others (with the `mpi` feature; without it, it refuses rather than train alone beside them);
/// started alone, it trains as one process without initializing MPI.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
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
