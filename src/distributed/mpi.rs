//! [`Cluster`] over MPI (the `mpi` feature): one rank per process that `mpirun` starts. For a
//! power-of-two number of ranks every sum is made of point-to-point messages (recursive halving and
//! doubling for the gradients, recursive doubling for short vectors), so it is associated in the
//! fixed tree [`crate::reduction`] relies on, which `MPI_Allreduce` does not promise; for other
//! counts, `MPI_Iallreduce`. Every wait is polled against a timeout, so that a rank
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

    /// Prints `error` naming this rank and ends every rank (`MPI_Abort`), at once.
    pub fn abort_all(&self, error: &str) -> ! {
        eprintln!(
            "error: rank {} of {}: {error}; stopping every rank",
            self.rank(),
            self.size()
        );
        self.world.abort(1)
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
    /// the aligned pairwise tree. Each rank sends the whole vector log₂N times: for short vectors,
    /// where the number of rounds is what costs.
    fn recursive_doubling<T: Summable>(&self, values: &[T], sums: &mut [T], received: &mut Vec<T>, what: &str) {
        sums.copy_from_slice(values);
        received.resize(values.len(), T::default());
        let (rank, size) = (self.rank(), self.size());
        let mut distance = 1;
        while distance < size {
            self.exchange_parts(rank ^ distance, sums, received, what);
            add(sums, received);
            distance *= 2;
        }
    }

    /// The same sum, tree and bits as [`MpiCluster::recursive_doubling`], moving 2(N−1)/N of the
    /// vector per rank instead of log₂N times all of it (Rabenseifner's algorithm). Recursive halving
    /// first: at distance 1, 2, 4, ... a rank keeps half of the part it still holds (by the bit of its
    /// rank at that distance), sends the other half to rank `rank ^ distance` and adds what that rank
    /// sends of the kept half, so after the last step it holds one N-th of the vector summed over all
    /// ranks in the pairwise tree. Then the halving is undone in reverse, each rank sending its summed
    /// part and receiving its partner's, until every rank holds the whole sum.
    fn halving_doubling<T: Summable>(&self, values: &[T], sums: &mut [T], received: &mut Vec<T>, what: &str) {
        sums.copy_from_slice(values);
        let (rank, size, len) = (self.rank(), self.size(), values.len());
        // Block `b` of `size`: the values from `bound(b)` to `bound(b + 1)`.
        let bound = |b: usize| b * len / size;
        received.resize(len, T::default());
        let (mut first, mut last) = (0, size);
        let mut distance = 1;
        while distance < size {
            let middle = (first + last) / 2;
            let (keep, give) = match rank & distance {
                0 => ((first, middle), (middle, last)),
                _ => ((middle, last), (first, middle)),
            };
            let kept = bound(keep.0)..bound(keep.1);
            let received = &mut received[..kept.len()];
            self.exchange_parts(rank ^ distance, &sums[bound(give.0)..bound(give.1)], received, what);
            add(&mut sums[kept], received);
            (first, last) = keep;
            distance *= 2;
        }
        while distance > 1 {
            distance /= 2;
            // The sibling of the blocks held: the half given away at this distance.
            let width = last - first;
            let sibling = match rank & distance {
                0 => (last, last + width),
                _ => (first - width, first),
            };
            let (low, high) = (first.min(sibling.0), last.max(sibling.1));
            let split = bound(first.max(sibling.0));
            let (left, right) = sums[bound(low)..bound(high)].split_at_mut(split - bound(low));
            let (mine, theirs) = match rank & distance {
                0 => (&*left, right),
                _ => (&*right, left),
            };
            self.exchange_parts(rank ^ distance, mine, theirs, what);
            (first, last) = (low, high);
        }
    }

    /// Sends `send` to rank `partner` and receives `receive.len()` values from it, both pending at
    /// once (so two ranks sending each other cannot wait on each other).
    fn exchange_parts<T: Summable>(&self, partner: usize, send: &[T], receive: &mut [T], what: &str) {
        let partner = self.world.process_at_rank(partner as i32);
        mpi::request::scope(|scope| {
            let mut send = Some(partner.immediate_send(scope, send));
            let mut receive = Some(partner.immediate_receive_into(scope, receive));
            self.wait(what, || {
                send = send.take().and_then(|r| r.test().err());
                receive = receive.take().and_then(|r| r.test().err());
                send.is_none() && receive.is_none()
            });
        });
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

/// What the sums add: float32 and float64.
trait Summable: mpi::datatype::Equivalence + Copy + Default + std::ops::AddAssign {}
impl<T: mpi::datatype::Equivalence + Copy + Default + std::ops::AddAssign> Summable for T {}

/// `sums[i] += received[i]`.
fn add<T: Summable>(sums: &mut [T], received: &[T]) {
    for (s, &r) in sums.iter_mut().zip(received) {
        *s += r;
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
            self.halving_doubling(values, sums, &mut self.received.borrow_mut(), what);
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
