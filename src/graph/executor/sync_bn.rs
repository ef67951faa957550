//! Synchronized batch norm (`--sync-bn`): a training batch norm whose statistics, and whose input
//! gradient's sums, span the global batch of every rank instead of this executor's images.
//!
//! Each per-channel sum is taken per gradient group (`crate::reduction`), the groups added in the
//! fixed pairwise tree in float64, then summed across the ranks ([`Cluster::sum_f64`], the same tree
//! for a power-of-two number of ranks), so one process with N groups and N ranks normalize with the same
//! bits. The statistics take two sums (the mean first, then the squared deviations from it, as the
//! unsynchronized path does); the backward pass one (`Σ dy`, `Σ dy·x̂`). `d gamma` and `d beta` stay this
//! executor's own, summed per group in float32 like every parameter gradient, since training sums
//! parameter gradients across ranks afterwards.

use std::ops::Range;

use crate::blocked::Layout;
use crate::distributed::Cluster;
use crate::error::Result;
use crate::ops::batchnorm::{BatchNorm2d, ChannelStats, input_grad_coefficients_all};
use crate::reduction::TreeSum;
use crate::tensor::{Images, ImagesMut};

/// What a synchronized batch norm needs besides its own inputs.
pub(super) struct SyncBn<'a> {
    pub(super) cluster: &'a dyn Cluster,
    /// Images in the global batch.
    pub(super) images: usize,
    /// The batch's gradient groups (ranges of this executor's images; at least one, which every
    /// forward pass sets).
    pub(super) groups: &'a [Range<usize>],
    pub(super) tree: &'a mut TreeSum<f64>,
    pub(super) tree_f32: &'a mut TreeSum<f32>,
}

/// A batch norm's input layout.
#[derive(Clone, Copy)]
pub(super) struct BatchNormInput<'a> {
    pub(super) bn: &'a BatchNorm2d,
    pub(super) x: Images<'a>,
    pub(super) pixels: usize,
    pub(super) layout: Layout,
}

impl BatchNormInput<'_> {
    fn channel_sums(&self, images: Range<usize>, sums: &mut [f64]) {
        self.bn
            .channel_sums(self.x.range(images), self.pixels, self.layout, sums)
    }

    fn channel_squared_deviations(&self, images: Range<usize>, means: &[f64], squares: &mut [f64]) {
        let x = self.x.range(images);
        self.bn
            .channel_squared_deviations(x, self.pixels, self.layout, means, squares)
    }

    /// Per channel `(Σ dy, Σ dy·x̂)` over `images`.
    fn grad_sums(&self, dy: Images<'_>, images: Range<usize>, stats: &ChannelStats) -> Vec<(f64, f64)> {
        let (x, dy) = (self.x.range(images.clone()), dy.range(images));
        self.bn.grad_sums(x, dy, self.pixels, self.layout, stats)
    }
}

impl SyncBn<'_> {
    /// Sums `add(group, partial)` over the groups in the tree, then across the ranks, into `out`.
    fn sum(&mut self, out: &mut [f64], what: &str, add: impl FnMut(Range<usize>, &mut [f64])) -> Result<()> {
        let mut local = vec![0f64; out.len()];
        self.tree.add_over_groups(self.groups, &mut local, add);
        self.cluster.sum_f64(&local, out, what)
    }

    /// The global batch's statistics of `input` into `stats`.
    pub(super) fn batch_statistics(&mut self, input: BatchNormInput<'_>, stats: &mut ChannelStats) -> Result<()> {
        let bn = input.bn;
        let values = bn.start_batch_statistics(self.images, input.pixels, stats)?;
        let mut sums = vec![0f64; bn.channels];
        self.sum(&mut sums, "sum of a synchronized batch norm's inputs", |g, part| {
            input.channel_sums(g, part)
        })?;
        let means: Vec<f64> = sums.iter().map(|s| s / values as f64).collect();
        self.sum(
            &mut sums,
            "sum of a synchronized batch norm's squared deviations",
            |g, part| input.channel_squared_deviations(g, &means, part),
        )?;
        bn.finish_statistics(&means, &sums, values, stats);
        Ok(())
    }

    /// Adds this executor's `d gamma` and `d beta` (per group in float32, as every parameter
    /// gradient) and, with `dx`, the input gradient from the global batch's sums.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward(
        &mut self,
        input: BatchNormInput<'_>,
        dy: Images<'_>,
        stats: &ChannelStats,
        gamma: &[f32],
        (dgamma, dbeta): (&mut [f32], &mut [f32]),
        dx: Option<&mut ImagesMut<'_>>,
    ) -> Result<()> {
        let (bn, channels, groups) = (input.bn, input.bn.channels, self.groups);
        let per_group: Vec<Vec<(f64, f64)>> = groups.iter().map(|g| input.grad_sums(dy, g.clone(), stats)).collect();
        let index = |g: &Range<usize>| groups.iter().position(|r| r == g).expect("one of the groups");
        // d beta then d gamma, each group's sums rounded to float32 before the tree.
        let mut params = vec![0f32; 2 * channels];
        self.tree_f32.add_over_groups(groups, &mut params, |g, part| {
            for (ch, &(sum_dy, sum_dy_xhat)) in per_group[index(&g)].iter().enumerate() {
                part[ch] += sum_dy as f32;
                part[channels + ch] += sum_dy_xhat as f32;
            }
        });
        for ch in 0..channels {
            dbeta[ch] += params[ch];
            dgamma[ch] += params[channels + ch];
        }
        let Some(dx) = dx else { return Ok(()) };
        let mut sums = vec![0f64; 2 * channels];
        self.sum(&mut sums, "sum of a synchronized batch norm's gradients", |g, part| {
            for (ch, &(sum_dy, sum_dy_xhat)) in per_group[index(&g)].iter().enumerate() {
                part[ch] += sum_dy;
                part[channels + ch] += sum_dy_xhat;
            }
        })?;
        let m = (self.images * input.pixels) as f64;
        let pairs: Vec<(f64, f64)> = (0..channels).map(|ch| (sums[ch], sums[channels + ch])).collect();
        let coefficients = input_grad_coefficients_all(stats, gamma, &pairs, m);
        bn.add_input_grad(input.x, dy, input.pixels, input.layout, &stats.mean, &coefficients, dx);
        Ok(())
    }
}
