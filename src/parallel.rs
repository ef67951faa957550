//! How work is split across the thread pool: the one place that reads the thread count, so every
//! parallel op decides the same way.
//!
//! The rule: run independent pieces (images, chunks of images, branches) in parallel, one per task,
//! when there are at least as many pieces as threads; otherwise run the pieces one at a time and split
//! each piece's own work (planes, GEMM panels) across the pool. Never both at once, so rayon does not
//! nest.

/// Threads in the pool the calling code runs on.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Whether `pieces` independent pieces of work give every thread at least one, so they should run in
/// parallel as they are (rather than each one split across the pool).
pub fn pieces_fill_threads(pieces: usize) -> bool {
    pieces >= threads()
}

/// How many parts a parallel op splits `pieces` independent pieces into: one per thread when they fill
/// the threads, otherwise one (each piece then splits its own work across the pool).
pub fn parts(pieces: usize) -> usize {
    if pieces_fill_threads(pieces) { threads() } else { 1 }
}

/// Runs `work(first, run, region, threads)` over `items` cut into [`parts`] contiguous runs of whole
/// granules of `granule` items: `first` is the index of the run's first item, `region` the run's own
/// `region_len` values of `regions` (which holds at least one region per thread, as
/// [`crate::workspace::Workspace::regions`] gives). Several runs go in parallel with
/// [`Threads::One`]; a single run goes on the calling thread with [`Threads::Pool`]. The cut depends only
/// on the item count and the thread count, never on which thread is free.
pub(crate) fn for_each_part<T, F>(items: &mut [T], granule: usize, regions: &mut [f32], region_len: usize, work: F)
where
    T: Send,
    F: Fn(usize, &mut [T], &mut [f32], Threads) + Sync,
{
    use rayon::prelude::*;
    let granule = granule.max(1);
    let granules = items.len().div_ceil(granule);
    let parts = parts(granules);
    if parts <= 1 {
        work(0, items, &mut regions[..region_len], Threads::Pool);
        return;
    }
    let run = granules.div_ceil(parts) * granule;
    items
        .par_chunks_mut(run)
        .zip(regions.par_chunks_mut(crate::workspace::region_stride(region_len)))
        .enumerate()
        .for_each(|(p, (items, region))| work(p * run, items, &mut region[..region_len], Threads::One));
}

/// Whether an op's inner work may use the whole pool, or runs on one thread because its caller already
/// runs parts in parallel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// One thread: the caller is already parallel.
    One,
    /// The whole rayon pool.
    Pool,
}

/// Runs `work(i, chunk)` on the `size`-value chunks of `data`: across the pool with [`Threads::Pool`],
/// in order on the calling thread with [`Threads::One`].
pub(crate) fn for_each_chunk_mut<F>(data: &mut [f32], size: usize, threads: Threads, work: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    use rayon::prelude::*;
    match threads {
        Threads::Pool => data
            .par_chunks_mut(size.max(1))
            .enumerate()
            .for_each(|(i, chunk)| work(i, chunk)),
        Threads::One => data
            .chunks_mut(size.max(1))
            .enumerate()
            .for_each(|(i, chunk)| work(i, chunk)),
    }
}
