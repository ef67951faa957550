//! The fixed order in which a batch's parameter gradients are summed over its images, so that a batch
//! trained in one process and the same batch split across ranks give gradients with the same bits.
//!
//! A parameter gradient is a sum over the batch's images. Summed in one chain (image after image) in one
//! process but as two half-chains added together across two ranks, the last bits differ, and under Adam
//! a gradient component that is rounding noise (a cancelling sum) becomes a full learning-rate step: ten
//! steps of googlenet-d2l ended 2.2e-2 apart in one bias. So the sum can be given one shape whoever
//! computes it: the global batch is cut into *gradient groups* of contiguous images ([`BatchSplit`]),
//! each group's gradient is computed from zero, and the groups' gradients are added in the *aligned
//! pairwise tree* — groups 0+1, 2+3, ..., then (0+1)+(2+3), ... — which [`TreeSum`] builds. A rank that
//! holds an aligned run of groups (a power-of-two count of them starting at a multiple of that count)
//! computes a whole subtree, and the ranks' subtrees combined pairwise by rank distance 1, 2, 4, ...
//! ([`crate::distributed::Cluster::sum_f32`]: recursive halving and doubling) finish the same tree.
//!
//! The weights therefore depend on the number of groups, not on how many ranks compute them: a
//! one-process run with 2 groups ends with the bits of a 2-rank run (one group each), and with 8
//! groups, the bits of 1, 2, 4 or 8 ranks. Groups are not free in one process (each group's gradient
//! is a weight-gradient pass of its own, and the fused ReLU-and-bias pass splits: googlenet-d2l's
//! training step at batch 128 took 12-22% longer with 8 groups, 3.5% with 2), so one process trains with one group
//! unless asked, and a data-parallel run with one group per rank.

use std::ops::Range;

/// How a global batch of `batch` images is cut into `groups` groups for the gradient sums: group `g`
/// holds images `g * batch / groups .. (g + 1) * batch / groups` (contiguous, sizes within one; some are
/// empty when the batch has fewer images than groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSplit {
    /// Images in the global batch.
    pub batch: usize,
    /// Groups it is cut into (at least one).
    pub groups: usize,
}

impl BatchSplit {
    /// The images of group `g`, as indices into the global batch.
    pub fn group(&self, g: usize) -> Range<usize> {
        let groups = self.groups.max(1);
        (g * self.batch / groups)..((g + 1) * self.batch / groups)
    }

    /// The images of groups `held`, as indices into the global batch.
    pub fn images_of(&self, held: Range<usize>) -> Range<usize> {
        if held.is_empty() {
            let at = self.group(held.start).start;
            return at..at;
        }
        self.group(held.start).start..self.group(held.end - 1).end
    }

    /// The groups rank `rank` of `ranks` trains on: contiguous, in order, `groups / ranks` each when the
    /// ranks divide the groups (aligned subtrees when both are powers of two), otherwise shared as evenly
    /// as whole groups allow. Panics if there are more ranks than groups.
    pub fn groups_of_rank(&self, rank: usize, ranks: usize) -> Range<usize> {
        assert!(
            ranks <= self.groups,
            "{ranks} ranks need at least as many gradient groups"
        );
        (rank * self.groups / ranks)..((rank + 1) * self.groups / ranks)
    }
}

/// The part of a global batch one executor's backward pass holds, and how its gradients are summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GradientShard {
    /// The global batch and its groups.
    pub split: BatchSplit,
    /// The groups this executor holds: its images are theirs, in order.
    pub held: Range<usize>,
}

impl GradientShard {
    /// A whole batch of `batch` images in `groups` groups: one process's training step.
    pub fn whole(batch: usize, groups: usize) -> GradientShard {
        let split = BatchSplit { batch, groups };
        GradientShard { split, held: 0..groups }
    }

    /// The images held, as indices into the global batch.
    pub fn images(&self) -> Range<usize> {
        self.split.images_of(self.held.clone())
    }

    /// The held groups' images as indices into the held images (the executor's batch), in order.
    pub fn local_groups(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let first = self.images().start;
        self.held.clone().map(move |g| {
            let r = self.split.group(g);
            r.start - first..r.end - first
        })
    }

    /// How many images the executor holds.
    pub fn len(&self) -> usize {
        self.images().len()
    }

    /// Whether it holds none (a rank's share of a short last batch).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which part of every global batch a rank trains on: rank `rank` of `ranks`, the batch cut into
/// `groups` gradient groups (at least one per rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharding {
    /// This rank.
    pub rank: usize,
    /// Ranks training together.
    pub ranks: usize,
    /// Gradient groups per global batch.
    pub groups: usize,
}

impl Sharding {
    /// One process holding every image, in `groups` groups.
    pub fn single(groups: usize) -> Sharding {
        Sharding {
            rank: 0,
            ranks: 1,
            groups,
        }
    }

    /// This rank's part of a global batch of `batch` images.
    pub fn shard(&self, batch: usize) -> GradientShard {
        let split = BatchSplit {
            batch,
            groups: self.groups,
        };
        GradientShard {
            split,
            held: split.groups_of_rank(self.rank, self.ranks),
        }
    }
}

/// Sums per-group gradients (or, in float64, per-group batch-norm sums) in the aligned pairwise tree,
/// with its scratch kept across calls (so a warm training step allocates nothing here).
#[derive(Debug)]
pub struct TreeSum<T = f32> {
    /// Partial sums, one per level of the tree that waits for its right-hand sibling.
    slots: Vec<Vec<T>>,
    /// The waiting partials as (level, slot), a level-k partial covering 2^k groups.
    stack: Vec<(u32, usize)>,
    /// Slots not in `stack`.
    free: Vec<usize>,
}

impl<T> Default for TreeSum<T> {
    fn default() -> Self {
        TreeSum {
            slots: Vec::new(),
            stack: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Copy + Default + std::ops::AddAssign> TreeSum<T> {
    /// Adds to `out` the sum over `groups` (ranges of the caller's images) of `add(group, partial)`,
    /// where `add` adds one group's gradient into a zeroed `partial` of `out`'s length: each group from
    /// zero, the groups combined in the aligned pairwise tree over their order. A lone group adds into
    /// `out` directly; an empty group's gradient is zero and `add` is not called for it.
    pub fn add_over_groups(
        &mut self,
        groups: &[Range<usize>],
        out: &mut [T],
        mut add: impl FnMut(Range<usize>, &mut [T]),
    ) {
        if groups.len() <= 1 {
            if let Some(g) = groups.iter().find(|g| !g.is_empty()) {
                add(g.clone(), out);
            }
            return;
        }
        let len = out.len();
        self.stack.clear();
        self.free.clear();
        self.free.extend((0..self.slots.len()).rev());
        // A binary counter over the groups: two waiting partials of the same level are siblings and
        // combine at once.
        for group in groups {
            let slot = self.free.pop().unwrap_or_else(|| {
                self.slots.push(Vec::new());
                self.slots.len() - 1
            });
            let partial = &mut self.slots[slot];
            partial.clear();
            partial.resize(len, T::default());
            if !group.is_empty() {
                add(group.clone(), partial);
            }
            self.stack.push((0, slot));
            while let [.., (left_level, _), (right_level, _)] = self.stack[..] {
                if left_level != right_level {
                    break;
                }
                let (level, right) = self.stack.pop().expect("two entries");
                let (_, left) = self.stack.pop().expect("two entries");
                self.combine(left, right);
                self.stack.push((level + 1, left));
            }
        }
        // A count that is not a power of two leaves partials of falling levels: the tree's right edge,
        // combined from the right (the smallest subtrees first).
        while self.stack.len() >= 2 {
            let (_, right) = self.stack.pop().expect("two entries");
            let (level, left) = self.stack.pop().expect("two entries");
            self.combine(left, right);
            self.stack.push((level, left));
        }
        let (_, root) = self.stack[0];
        for (o, &v) in out.iter_mut().zip(&self.slots[root]) {
            *o += v;
        }
    }

    /// `slots[left] += slots[right]` (`left != right`), and `right` freed.
    fn combine(&mut self, left: usize, right: usize) {
        let (l, r) = if left < right {
            let (low, high) = self.slots.split_at_mut(right);
            (&mut low[left], &high[0])
        } else {
            let (low, high) = self.slots.split_at_mut(left);
            (&mut high[0], &low[right])
        };
        for (a, &b) in l.iter_mut().zip(r.iter()) {
            *a += b;
        }
        self.free.push(right);
    }
}

/// The aligned pairwise tree's sum of `values` (the reference the tests hold [`TreeSum`] to).
pub fn pairwise_sum(values: &[f32]) -> f32 {
    let width = values.len().next_power_of_two();
    fn node(values: &[f32], start: usize, width: usize) -> Option<f32> {
        if start >= values.len() {
            return None;
        }
        if width == 1 {
            return Some(values[start]);
        }
        let half = width / 2;
        match (node(values, start, half), node(values, start + half, half)) {
            (Some(l), Some(r)) => Some(l + r),
            (l, r) => l.or(r),
        }
    }
    node(values, 0, width.max(1)).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_sum_is_the_aligned_pairwise_tree() {
        // Values whose sums round differently in every association, so a wrong order shows.
        let mut tree = TreeSum::default();
        for groups in 1..20 {
            let values: Vec<f32> = (0..groups)
                .map(|i| 1.0 + (i as f32) * 1.1e-7 + 3e-8 * (i * i) as f32)
                .collect();
            let values: Vec<f32> = values
                .iter()
                .enumerate()
                .map(|(i, v)| if i % 3 == 0 { v * 1e4 } else { *v })
                .collect();
            let mut out = [0.0f32];
            let ranges: Vec<_> = (0..groups).map(|g| g..g + 1).collect();
            tree.add_over_groups(&ranges, &mut out, |g, p| p[0] += values[g.start]);
            assert_eq!(out[0].to_bits(), pairwise_sum(&values).to_bits(), "{groups} groups");
        }
    }

    #[test]
    fn rank_subtrees_combined_by_distance_give_the_whole_tree() {
        let values: Vec<f32> = (0..8)
            .map(|i| 0.1 + i as f32 * 0.37e-3)
            .map(|v: f32| v.powi(3) * 1e3)
            .collect();
        let whole = pairwise_sum(&values);
        for ranks in [1, 2, 4, 8] {
            let split = BatchSplit { batch: 8, groups: 8 };
            let mut sums: Vec<f32> = (0..ranks)
                .map(|r| pairwise_sum(&values[split.images_of(split.groups_of_rank(r, ranks))]))
                .collect();
            // Recursive doubling: at distance d, rank r adds its partner r ^ d's sum.
            let mut d = 1;
            while d < ranks {
                sums = (0..ranks).map(|r| sums[r] + sums[r ^ d]).collect();
                d *= 2;
            }
            assert!(sums.iter().all(|s| s.to_bits() == whole.to_bits()), "{ranks} ranks");
        }
    }

    #[test]
    fn shards_hold_every_image_once_in_order() {
        for batch in 0..40 {
            for (ranks, groups) in [(1, 1), (1, 8), (2, 2), (2, 8), (3, 3), (3, 8), (4, 8), (8, 8)] {
                let covered: Vec<usize> = (0..ranks)
                    .flat_map(|rank| {
                        let shard = Sharding { rank, ranks, groups }.shard(batch);
                        let images = shard.images();
                        let local: Vec<usize> = shard.local_groups().flatten().map(|i| i + images.start).collect();
                        assert_eq!(local, images.clone().collect::<Vec<_>>());
                        images
                    })
                    .collect();
                assert_eq!(covered, (0..batch).collect::<Vec<_>>(), "batch {batch}, {ranks} ranks");
            }
        }
    }
}
