//! [`Cluster`] over MPI (the `mpi` feature): one rank per process that `mpirun` starts, sums by
//! `MPI_Iallreduce` on the world communicator, polled against a timeout so that a rank that stopped
//! answering ends the run with an error instead of a hang.

use super::Cluster;
use crate::error::Result;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::time::{Duration, Instant};

/// The ranks `mpirun` started, and how long a collective may wait for the others.
pub struct MpiCluster {
    // Finalizes MPI when dropped; kept for that.
    _universe: Universe,
    world: SimpleCommunicator,
    timeout: Duration,
}

impl MpiCluster {
    /// Initializes MPI (only the calling thread makes MPI calls: `Threading::Funneled`). `None` when
    /// MPI was already initialized. `timeout` bounds each collective's wait.
    pub fn init(timeout: Duration) -> Option<MpiCluster> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)?;
        let world = universe.world();
        Some(MpiCluster {
            _universe: universe,
            world,
            timeout,
        })
    }

    /// Whether this process was started by an MPI launcher (`mpirun`, `srun`): then `incept train`
    /// joins the others; started alone, it trains as one process without initializing MPI.
    pub fn launched() -> bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
    }

    /// Sums `values` across the ranks into `sums`, waiting at most the timeout. A timeout aborts every
    /// rank (`MPI_Abort`): an unfinished collective cannot be cancelled, and its buffers must outlive it.
    fn sum<T: mpi::datatype::Equivalence>(&self, values: &[T], sums: &mut [T], what: &str) -> Result<()> {
        let started = Instant::now();
        mpi::request::scope(|scope| {
            let mut request = self
                .world
                .immediate_all_reduce_into(scope, values, sums, SystemOperation::sum());
            loop {
                match request.test() {
                    Ok(_) => return,
                    Err(pending) => request = pending,
                }
                if started.elapsed() > self.timeout {
                    eprintln!(
                        "error: rank {} of {}: the {what} did not complete within {:.0} s: another rank \
                         has stopped (mpirun names a rank that died) or hangs; stopping every rank",
                        self.rank(),
                        self.size(),
                        self.timeout.as_secs_f64()
                    );
                    self.world.abort(2);
                }
                // Open MPI advances a non-blocking collective only inside MPI calls: test again at once.
                std::thread::yield_now();
            }
        });
        Ok(())
    }
}

impl Cluster for MpiCluster {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn sum_f32(&self, values: &[f32], sums: &mut [f32], what: &str) -> Result<()> {
        self.sum(values, sums, what)
    }
    fn sum_f64(&self, values: &[f64], sums: &mut [f64], what: &str) -> Result<()> {
        self.sum(values, sums, what)
    }
}
