//! The production path: convolutions on the blocked channel layout (`crate::blocked`) with incept's own
//! microkernel, which the plan picks for every layer it can: the direct convolution (`direct/`), its
//! few-channel form for a first layer (`direct_stem.rs`), and Winograd F(2,3) / F(4,3) on the same layout
//! (`winograd_blocked.rs`).

pub mod direct;
pub(super) mod direct_stem;
pub mod winograd_blocked;
