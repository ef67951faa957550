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
