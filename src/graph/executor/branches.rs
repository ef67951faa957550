//! Inception branches run concurrently, image by image: used when a batch has fewer images than there
//! are threads, so one op at a time cannot fill the cores.

use super::Mode;
use super::forward::{NodeRun, Saved, forward_node, node_seed};
use super::images;
use super::state::PackedWeights;
use crate::error::Result;
use crate::graph::builder::{Graph, NodeId};
use crate::graph::plan::{BranchGroup, Plan};
use crate::ops::batchnorm::ChannelStats;
use crate::tensor::{Images, ImagesMut};
use crate::workspace::Workspace;
use rayon::prelude::*;

/// What running one branch group needs besides the buffers.
pub(super) struct BranchRun<'a> {
    pub(super) graph: &'a Graph,
    pub(super) params: &'a [Vec<f32>],
    pub(super) plan: &'a Plan,
    /// Per node: the packed weights of a convolution that runs `ConvAlgo::Direct`.
    pub(super) packed: &'a PackedWeights,
    pub(super) batch: usize,
    /// The pass's mode (training runs branches concurrently only when no batch norm needs the batch).
    pub(super) mode: Mode,
    /// Dropout's seed for this pass.
    pub(super) pass_seed: u64,
    /// The global batch index of the batch's first image ([`super::state::State::first_image`]).
    pub(super) first_image: usize,
}

/// The buffers one chain of a branch group writes, taken out of the executor while it runs.
struct ChainBuffers {
    outputs: Vec<Vec<f32>>,
    argmax: Vec<Vec<u32>>,
    stats: Vec<ChannelStats>,
}

impl BranchRun<'_> {
    /// Runs every chain of `group`, the chains concurrently, one image at a time (within an image the
    /// concat's parts are disjoint slices, so the chains can write them without sharing anything).
    pub(super) fn forward(
        &self,
        group: &BranchGroup,
        acts: &mut [Vec<f32>],
        argmax: &mut [Vec<u32>],
        bn_stats: &mut [ChannelStats],
        workspaces: &mut [Workspace],
    ) -> Result<()> {
        let places = &self.plan.places;
        let cat = places[group.concat];
        let mut concat_buffer = std::mem::take(&mut acts[cat.buffer]);
        let mut chains: Vec<ChainBuffers> = group
            .chains
            .iter()
            .map(|chain| ChainBuffers {
                outputs: chain[..chain.len() - 1]
                    .iter()
                    .map(|&id| std::mem::take(&mut acts[places[id].buffer]))
                    .collect(),
                argmax: chain.iter().map(|&id| std::mem::take(&mut argmax[id])).collect(),
                stats: chain.iter().map(|&id| std::mem::take(&mut bn_stats[id])).collect(),
            })
            .collect();
        let source = images(acts, places[group.source], self.batch);
        let result = (0..self.batch).try_for_each(|n| {
            let mut rest = &mut concat_buffer[n * cat.stride + cat.offset..][..cat.len];
            let mut parts = Vec::with_capacity(chains.len());
            for chain in &group.chains {
                let len = places[chain[chain.len() - 1]].len;
                let (part, tail) = rest.split_at_mut(len);
                parts.push(part);
                rest = tail;
            }
            let x = Images::strided(source.get(n), 1, source.len(), source.len(), 0);
            chains
                .par_iter_mut()
                .zip(&mut *workspaces)
                .zip(&group.chains)
                .zip(parts)
                .try_for_each(|(((bufs, ws), chain), part)| self.forward_chain(chain, bufs, n, x, part, ws))
        });
        for (chain, bufs) in group.chains.iter().zip(chains) {
            for (&id, buffer) in chain.iter().zip(bufs.outputs) {
                acts[places[id].buffer] = buffer;
            }
            for (&id, a) in chain.iter().zip(bufs.argmax) {
                argmax[id] = a;
            }
            for (&id, stats) in chain.iter().zip(bufs.stats) {
                bn_stats[id] = stats;
            }
        }
        acts[cat.buffer] = concat_buffer;
        result
    }

    /// Runs one chain on image `n` of the source (`x`), its last node writing `part`.
    fn forward_chain(
        &self,
        chain: &[NodeId],
        bufs: &mut ChainBuffers,
        n: usize,
        x: Images<'_>,
        part: &mut [f32],
        ws: &mut Workspace,
    ) -> Result<()> {
        let (&last, inner) = chain.split_last().expect("a chain has at least one node");
        let mut input = x;
        for (k, (&id, buffer)) in inner.iter().zip(&mut bufs.outputs).enumerate() {
            let len = self.plan.lens[id];
            let out = &mut buffer[n * len..][..len];
            self.forward_image(id, input, out, &mut bufs.argmax[k], &mut bufs.stats[k], n, ws)?;
            input = Images::dense(out, 1, len);
        }
        let k = inner.len();
        self.forward_image(last, input, part, &mut bufs.argmax[k], &mut bufs.stats[k], n, ws)
    }

    /// Runs node `id` on one image `x` (image `n` of the batch) into `out`, in the pass's mode, with the
    /// dropout stream the whole-batch pass would give image `n` (batch statistics need the whole batch,
    /// so a graph with batch norm never trains branches image by image).
    /// `argmax` and `stats` are the node's whole-batch buffers.
    #[allow(clippy::too_many_arguments)]
    fn forward_image(
        &self,
        id: NodeId,
        x: Images<'_>,
        out: &mut [f32],
        argmax: &mut [u32],
        stats: &mut ChannelStats,
        n: usize,
        ws: &mut Workspace,
    ) -> Result<()> {
        let node = &self.graph.nodes[id];
        let len = self.plan.lens[id];
        // Max pools keep argmaxes or taps, dropouts kept flags; the others nothing.
        let saved_len = super::state::saved_image_len(self.graph, id, self.plan.layouts[id], len);
        let argmax = if argmax.is_empty() {
            argmax
        } else {
            &mut argmax[n * saved_len..][..saved_len]
        };
        let saved = Saved {
            argmax,
            seed: node_seed(self.pass_seed, id),
            first_image: self.first_image + n,
            stats,
            groups: &[],
            sync: None,
        };
        let mut y = ImagesMut::dense(out, 1, len);
        forward_node(
            self.graph,
            node,
            node.inputs[0],
            x,
            &mut y,
            saved,
            self.params,
            NodeRun::of(self.graph, self.plan, self.packed, self.mode, id),
            self.mode,
            ws,
        )
        .map_err(|e| e.in_node(&node.name))
    }
}
