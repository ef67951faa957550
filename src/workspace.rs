//! Scratch memory for the ops, owned by whoever runs them and passed into every call that needs some.
//!
//! An executor sizes its workspace once, from the plan, for every op and algorithm it will run
//! ([`WorkspaceSize`]), so a training step never grows it. The ndarray wrappers in `ops/` start from an
//! empty workspace and let the call grow it.
//!
//! A parallel op splits its work into static parts (`crate::parallel::for_each_part`), part `p` using
//! region `p` of [`Workspace::regions`]; nothing is per thread or global.

/// Values a workspace holds, per kind of buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkspaceSize {
    /// One region per part of a parallel op, all parts together.
    pub regions: usize,
    /// Weight-gradient partials, one gradient per part.
    pub partials: usize,
    /// Operands transformed once for a call and shared by its parts (Winograd's weights or tiles).
    pub shared: usize,
}

impl WorkspaceSize {
    /// The larger of `self` and `other`, buffer by buffer.
    pub fn max(self, other: WorkspaceSize) -> WorkspaceSize {
        WorkspaceSize {
            regions: self.regions.max(other.regions),
            partials: self.partials.max(other.partials),
            shared: self.shared.max(other.shared),
        }
    }

    /// Regions of `region_len` values for every part an op can split into.
    pub(crate) fn regions(region_len: usize) -> WorkspaceSize {
        WorkspaceSize {
            regions: regions_len(region_len),
            ..WorkspaceSize::default()
        }
    }
}

/// The buffers; see the module documentation.
#[derive(Debug, Default)]
pub struct Workspace {
    regions: Vec<f32>,
    partials: Vec<f32>,
    shared: Vec<f32>,
}

/// The values `parts` regions of `region_len` take: one [`region_stride`] per thread.
fn regions_len(region_len: usize) -> usize {
    crate::parallel::threads() * region_stride(region_len)
}

/// Where region `p` starts is `p` times this: `region_len` rounded up to whole 128-byte line pairs (at
/// least one), so two threads never write the same cache line. A max pool's region is a few hundred
/// bytes; packed end to end, the two threads' regions shared lines and the pools ran 2× slower.
pub(crate) fn region_stride(region_len: usize) -> usize {
    region_len.max(1).next_multiple_of(32)
}

/// `buf` grown to at least `len` values (growth only happens outside planned executors).
fn at_least(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

impl Workspace {
    /// A workspace holding `size` values from the start.
    pub fn with_size(size: WorkspaceSize) -> Workspace {
        let mut ws = Workspace::default();
        ws.reserve(size);
        ws
    }

    /// Grows every buffer to at least `size`.
    pub fn reserve(&mut self, size: WorkspaceSize) {
        at_least(&mut self.regions, size.regions);
        at_least(&mut self.partials, size.partials);
        at_least(&mut self.shared, size.shared);
    }

    /// A workspace holding `size` values, allocated fallibly ([`crate::memory::zeroed`]): what a planned
    /// executor holds.
    pub fn try_with_size(size: WorkspaceSize) -> crate::error::Result<Workspace> {
        let mut ws = Workspace::default();
        ws.try_reserve(size)?;
        Ok(ws)
    }

    /// [`Workspace::reserve`], with an error instead of an abort when the allocator refuses.
    pub fn try_reserve(&mut self, size: WorkspaceSize) -> crate::error::Result<()> {
        for (buf, len) in [
            (&mut self.regions, size.regions),
            (&mut self.partials, size.partials),
            (&mut self.shared, size.shared),
        ] {
            if buf.len() < len {
                *buf = crate::memory::zeroed(len, "workspace")?;
            }
        }
        Ok(())
    }

    /// What the buffers hold now.
    pub fn size(&self) -> WorkspaceSize {
        WorkspaceSize {
            regions: self.regions.len(),
            partials: self.partials.len(),
            shared: self.shared.len(),
        }
    }

    /// Regions of `region_len` values, one per part (contents unspecified).
    pub(crate) fn regions(&mut self, region_len: usize) -> &mut [f32] {
        at_least(&mut self.regions, regions_len(region_len))
    }

    /// `shared_len` values for operands transformed once per call, and [`Workspace::regions`] beside
    /// them.
    pub(crate) fn shared_and_regions(&mut self, shared_len: usize, region_len: usize) -> (&mut [f32], &mut [f32]) {
        let shared = at_least(&mut self.shared, shared_len);
        (shared, at_least(&mut self.regions, regions_len(region_len)))
    }

    /// `partials_len` values for a weight gradient's partials, and `shared_len` values for operands
    /// transformed once per call.
    pub(crate) fn partials_and_shared(&mut self, partials_len: usize, shared_len: usize) -> (&mut [f32], &mut [f32]) {
        let partials = at_least(&mut self.partials, partials_len);
        (partials, at_least(&mut self.shared, shared_len))
    }

    /// `partials_len` values for weight-gradient partials, and [`Workspace::regions`] beside them.
    pub(crate) fn partials_and_regions(&mut self, partials_len: usize, region_len: usize) -> (&mut [f32], &mut [f32]) {
        let partials = at_least(&mut self.partials, partials_len);
        (partials, at_least(&mut self.regions, regions_len(region_len)))
    }
}
