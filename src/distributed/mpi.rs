//! [`Cluster`] over MPI (the `mpi` feature): one rank per process that `mpirun` starts. For a
//! power-of-two number of ranks every sum is recursive doubling over point-to-point messages, so it is
//! associated in the fixed tree [`crate::reduction`] relies on, which `MPI_Allreduce` does not
//! promise; for other counts, `MPI_Iallreduce`. Every wait is polled against a timeout, so that a rank
//! that stopped answering ends the run with an error instead of a hang.

use super::Cluster;
use crate::error::Result;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The ranks `mpirun` started, and how long a collective may wait for the others.
pub struct MpiCluster {
    // Finalizes MPI when dropped; kept for that.
    _universe: Universe,
    world: SimpleCommunicator,
    timeout: Duration,
    /// A partner's partial sum, received during [`Cluster::sum_f32`]; kept so a step allocates nothing.
    received: RefCell<Vec<f32>>,
    /// The same for [`Cluster::sum_f64`].
    received_f64: RefCell<Vec<f64>>,
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
            received: RefCell::new(Vec::new()),
            received_f64: RefCell::new(Vec::new()),
        })
    }

    /// Sums `values` across the ranks into `sums` by `MPI_Iallreduce`, in MPI's order.
    fn all_reduce<T: mpi::datatype::Equivalence>(&self, values: &[T], sums: &mut [T], what: &str) {
        mpi::request::scope(|scope| {
            let mut request = Some(
                self.world
                    .immediate_all_reduce_into(scope, values, sums, SystemOperation::sum()),
            );
            self.wait(what, || {
                request = request.take().and_then(|r| r.test().err());
                request.is_none()
            });
        });
    }

    /// Sums `values` across a power-of-two number of ranks into `sums` by recursive doubling: at
    /// distance 1, 2, 4, ... each rank swaps its partial sum with rank `rank ^ distance` and adds the
    /// two (the same bits on both, addition being commutative), which associates the ranks' values as
    /// the aligned pairwise tree.
    fn recursive_doubling<T>(&self, values: &[T], sums: &mut [T], received: &mut Vec<T>, what: &str)
    where
        T: mpi::datatype::Equivalence + Copy + Default + std::ops::AddAssign,
    {
        sums.copy_from_slice(values);
        received.resize(values.len(), T::default());
        let (rank, size) = (self.rank(), self.size());
        let mut distance = 1;
        while distance < size {
            let partner = self.world.process_at_rank((rank ^ distance) as i32);
            mpi::request::scope(|scope| {
                let mut send = Some(partner.immediate_send(scope, &sums[..]));
                let mut receive = Some(partner.immediate_receive_into(scope, &mut received[..]));
                self.wait(what, || {
                    send = send.take().and_then(|r| r.test().err());
                    receive = receive.take().and_then(|r| r.test().err());
                    send.is_none() && receive.is_none()
                });
            });
            for (s, &r) in sums.iter_mut().zip(received.iter()) {
                *s += r;
            }
            distance *= 2;
        }
    }

    /// Calls `done` until it says the pending requests completed, at most the timeout. A timeout
    /// aborts every rank (`MPI_Abort`): an unfinished request cannot be cancelled, and its buffers
    /// must outlive it.
    fn wait(&self, what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
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
            // Open MPI advances non-blocking requests only inside MPI calls: test again at once.
            std::thread::yield_now();
        }
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
        if self.size().is_power_of_two() {
            self.recursive_doubling(values, sums, &mut self.received.borrow_mut(), what);
        } else {
            self.all_reduce(values, sums, what);
        }
        Ok(())
    }
    fn sum_f64(&self, values: &[f64], sums: &mut [f64], what: &str) -> Result<()> {
        if self.size().is_power_of_two() {
            self.recursive_doubling(values, sums, &mut self.received_f64.borrow_mut(), what);
        } else {
            self.all_reduce(values, sums, what);
        }
        Ok(())
    }
}
