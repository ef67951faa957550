//! The forward pass: every node in order on the whole batch, or an Inception block's branches
//! concurrently (`branches.rs`); each node's arithmetic is a call into its op in `ops/`.

use super::branches::BranchRun;
use super::state::{self, PackedWeights, State};
use super::sync_bn::{BatchNormInput, SyncBn};
use super::{BranchSchedule, Mode, images, images_mut, with_buffer};
use crate::blocked;
use crate::distributed::Cluster;
use crate::error::{Error, Result};
use crate::graph::builder::{Graph, Layer, Node, NodeId};
use crate::graph::plan::{Layout, Plan};
use crate::microkernel::Isa;
use crate::ops::activation;
use crate::ops::batchnorm::ChannelStats;
use crate::ops::conv::direct::{self, DirectWeights};
use crate::ops::conv::winograd_blocked::WinogradWeights;
use crate::ops::conv::{self, ConvAlgo, Fused};
use crate::ops::pool::{self, max_pool_forward};
use crate::ops::pool_blocked;
use crate::ops::shape;
use crate::reduction::GradientShard;
use crate::tensor::{Images, ImagesMut};
use crate::workspace::Workspace;
use std::time::Instant;

/// What a node keeps from its forward pass for its backward pass, besides its output.
pub(super) struct Saved<'a> {
    /// A max pool's argmaxes, or a dropout's kept flags (empty for other nodes).
    pub(super) argmax: &'a mut [u32],
    /// A dropout's seed for this pass and node.
    pub(super) seed: u64,
    /// The batch index of `x`'s first image (images run one at a time in concurrent branches).
    pub(super) first_image: usize,
    /// A batch norm's statistics.
    pub(super) stats: &'a mut ChannelStats,
    /// The gradient groups of a training pass ([`crate::reduction`]), as ranges of `x`'s images: a
    /// linear layer runs each group on its own, so that the GEMM's shape (and with it the rounding)
    /// of an image's row does not depend on how many other images share the call. Empty: one call.
    pub(super) groups: &'a [std::ops::Range<usize>],
    /// For a synchronized batch norm in training: the other ranks and the scratch of its sums.
    pub(super) sync: Option<SyncBn<'a>>,
}

/// What the plan decided for one node: the layouts of its (first) input and its output and, for a
/// convolution, its algorithm and, for [`ConvAlgo::Direct`], its weights packed once (and transformed
/// for Winograd where the plan runs it in a pass of this mode).
#[derive(Clone, Copy)]
pub(super) struct NodeRun<'a> {
    pub(super) algo: Option<ConvAlgo>,
    pub(super) packed: Option<&'a DirectWeights>,
    pub(super) winograd: Option<&'a WinogradWeights>,
    pub(super) input: Layout,
    pub(super) output: Layout,
    /// The instruction set of the microkernel calls.
    pub(super) isa: Isa,
}

impl<'a> NodeRun<'a> {
    /// Node `id`'s run in a pass of `mode`, from the plan and the executor's packed weights.
    pub(super) fn of(graph: &Graph, plan: &Plan, packed: &'a PackedWeights, mode: Mode, id: NodeId) -> Self {
        NodeRun {
            algo: plan.conv_algos[id],
            packed: packed.direct[id].as_ref(),
            winograd: packed.winograd[id]
                .as_ref()
                .filter(|_| packed.winograd_mode == Some(mode)),
            input: graph.nodes[id]
                .inputs
                .first()
                .map_or(Layout::Nchw, |&i| plan.layouts[i]),
            output: plan.layouts[id],
            isa: plan.options.isa,
        }
    }
}

/// Computes one single-input node (`node`, reading node `input`'s output `x`) into `y`.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_node(
    graph: &Graph,
    node: &Node,
    input: NodeId,
    x: Images<'_>,
    y: &mut ImagesMut<'_>,
    saved: Saved<'_>,
    params: &[Vec<f32>],
    run: NodeRun<'_>,
    mode: Mode,
    ws: &mut Workspace,
) -> Result<()> {
    let [c, h, w] = graph.nodes[input].shape;
    let batch = x.count();
    match &node.layer {
        Layer::Conv {
            conv,
            weight,
            bias,
            relu,
        } => {
            let g = conv.geometry([batch, c, h, w])?;
            let algo = run
                .algo
                .expect("every convolution's algorithm is resolved when the executor is built");
            let b = bias.map(|b| params[b].as_slice());
            match (run.winograd, run.packed) {
                (Some(winograd), _) => winograd.forward_images(x, *relu, y, ws, run.isa),
                (None, Some(packed)) => direct::forward_images(packed, x, run.input, *relu, y, run.output, ws, run.isa),
                (None, None) => {
                    let fused = Fused { bias: b, relu: *relu };
                    conv::forward_images_fused(&g, algo, x, &params[*weight], fused, y, ws);
                }
            }
        }
        Layer::Linear { linear, weight, bias } => {
            let (w, b) = (&params[*weight], bias.map(|b| params[b].as_slice()));
            if saved.groups.len() > 1 {
                for g in saved.groups {
                    linear.forward_images(x.range(g.clone()), w, b, &mut y.range_mut(g.clone()));
                }
            } else {
                linear.forward_images(x, w, b, y);
            }
        }
        Layer::BatchNorm {
            bn,
            gamma,
            beta,
            running_mean,
            running_var,
            relu,
        } => {
            let layout = run.input;
            let input = BatchNormInput {
                bn,
                x,
                pixels: h * w,
                layout,
            };
            match (mode, saved.sync) {
                (Mode::Train, Some(mut sync)) => sync.batch_statistics(input, saved.stats)?,
                (Mode::Train, None) => bn.batch_statistics(x, h * w, layout, saved.stats)?,
                (Mode::Eval, _) => bn.running_statistics(&params[*running_mean], &params[*running_var], saved.stats),
            }
            let (stats, gamma, beta) = (&*saved.stats, &params[*gamma], &params[*beta]);
            bn.normalize_images(x, h * w, layout, stats, gamma, beta, *relu, y);
        }
        Layer::ZeroPad(pads) => match run.output {
            Layout::Blocked => shape::zero_pad_blocked_images(x, [h, w], *pads, y),
            Layout::Nchw => shape::zero_pad_images(x, [h, w], *pads, y),
        },
        Layer::MaxPool(pool) => {
            let g = pool.window.geometry("max_pool2d", [batch, c, h, w])?;
            match run.output {
                Layout::Blocked if pool_blocked::offsets_fit(&g) => {
                    pool_blocked::max_pool_forward_blocked_offsets_images(&g, x, y, state::as_u16_mut(saved.argmax))
                }
                Layout::Blocked => pool_blocked::max_pool_forward_blocked_images(&g, x, y, saved.argmax),
                Layout::Nchw => max_pool_forward(&g, x, y, saved.argmax, ws),
            }
        }
        Layer::Dropout(dropout) => match mode {
            Mode::Train => dropout.forward_images(x, y, saved.argmax, saved.seed, saved.first_image),
            Mode::Eval => dropout.identity_images(x, y, saved.argmax),
        },
        Layer::AvgPool(pool) => {
            let g = pool.window.geometry("avg_pool2d", [batch, c, h, w])?;
            match run.output {
                Layout::Blocked => pool_blocked::avg_pool_forward_blocked_images(pool, &g, x, y),
                Layout::Nchw => pool.forward_images(&g, x, y),
            }
        }
        Layer::GlobalAvgPool => match run.input {
            Layout::Blocked => pool_blocked::global_avg_pool_forward_blocked_images(x, c, h * w, y),
            Layout::Nchw => pool::global_avg_pool_forward(x, h * w, y),
        },
        Layer::AdaptiveAvgPool(output) => pool::adaptive_avg_pool_forward(x, [h, w], *output, y),
        Layer::Relu => activation::relu_images(x, y),
        // Only a flatten that reorders runs: the exit from the blocked layout to the classifier's rows.
        Layer::Flatten => {
            for (n, out) in y.iter_mut() {
                blocked::to_nchw(x.get(n), c, [h, w], out);
            }
        }
        Layer::Input | Layer::Concat | Layer::AddScaled { .. } => {
            unreachable!("{} is not a single-input op", node.name)
        }
    }
    Ok(())
}

/// Dropout's seed for node `id` in the pass seeded `pass_seed`.
pub(super) fn node_seed(pass_seed: u64, id: NodeId) -> u64 {
    pass_seed ^ (id as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

impl State {
    /// See [`super::Executor::forward`].
    /// Runs the graph on `input`; in training, as `shard` of a global batch (`None`: a whole batch of
    /// [`State::groups_per_batch`] groups), which the loss and backward pass then follow.
    pub(super) fn forward(
        &mut self,
        graph: &Graph,
        params: &[Vec<f32>],
        input: Images<'_>,
        mode: Mode,
        shard: Option<&GradientShard>,
        sync: Option<&dyn Cluster>,
    ) -> Result<()> {
        let expected = self.plan.lens[0];
        if input.len() != expected {
            let shape = graph.input_shape();
            return Err(Error::shape(
                "graph input",
                format!("{shape:?} = {expected} values per image"),
                format!("{} values per image", input.len()),
            ));
        }
        if input.count() == 0 || input.count() > self.capacity {
            return Err(Error::shape(
                "graph input",
                format!("a batch of 1 to {} images", self.capacity),
                format!("{} images", input.count()),
            ));
        }
        self.pack_weights(graph, params, mode)?;
        let batch = input.count();
        match shard {
            Some(shard) => self.set_gradient_shard(shard),
            None => self.set_gradient_shard(&GradientShard::whole(batch, self.groups_per_batch)),
        }
        self.batch = batch;
        self.mode = mode;
        if mode == Mode::Train {
            self.dropout_seed = self.dropout_seed.wrapping_add(1).wrapping_mul(0x2545_F491_4F6C_DD1D);
        }
        // Batch statistics need the whole batch at once, so branches that hold a batch norm cannot run
        // image by image in training.
        let batch_norm = graph.nodes.iter().any(|n| matches!(n.layer, Layer::BatchNorm { .. }));
        let concurrent = !(mode == Mode::Train && batch_norm)
            && match self.branches {
                BranchSchedule::Sequential => false,
                BranchSchedule::Concurrent => true,
                // One op cannot fill the cores when there are fewer images than threads.
                BranchSchedule::Auto => !crate::parallel::pieces_fill_threads(batch),
            };
        let mut id = 0;
        while id < graph.nodes.len() {
            let group = if concurrent {
                self.plan.branch_groups.iter().find(|g| g.first == id)
            } else {
                None
            };
            let started = self.profile.is_some().then(Instant::now);
            if let Some(group) = group {
                let run = BranchRun {
                    graph,
                    params,
                    plan: &self.plan,
                    packed: &self.packed,
                    batch,
                    mode,
                    pass_seed: self.dropout_seed,
                    first_image: self.first_image,
                };
                run.forward(
                    group,
                    &mut self.acts,
                    &mut self.argmax,
                    &mut self.bn_stats,
                    &mut self.chain_workspaces,
                )?;
                // The chains ran together: their time is booked on the concat, which has nothing
                // left to do (its parts are in place).
                let concat = group.concat;
                self.record_forward(concat, started);
                if let Some(profile) = self.profile.as_mut() {
                    profile[concat].concurrent += 1;
                }
                id = concat + 1;
                continue;
            }
            // Auxiliary heads only matter to the training loss.
            if mode == Mode::Eval && !self.main_path[id] {
                id += 1;
                continue;
            }
            self.forward_one(graph, params, id, input, mode, sync)?;
            self.record_forward(id, started);
            id += 1;
        }
        Ok(())
    }

    fn record_forward(&mut self, id: NodeId, started: Option<Instant>) {
        if let (Some(t), Some(profile)) = (started, self.profile.as_mut()) {
            profile[id].forward += t.elapsed();
            profile[id].calls += 1;
        }
    }

    /// Runs node `id` on the whole batch.
    fn forward_one(
        &mut self,
        graph: &Graph,
        params: &[Vec<f32>],
        id: NodeId,
        input: Images<'_>,
        mode: Mode,
        sync: Option<&dyn Cluster>,
    ) -> Result<()> {
        let node = &graph.nodes[id];
        let (batch, places) = (self.batch, &self.plan.places);
        let node_run = NodeRun::of(graph, &self.plan, &self.packed, mode, id);
        let p = places[id];
        let in_place = &self.plan.in_place[id];
        let argmax = &mut self.argmax[id];
        let stats = &mut self.bn_stats[id];
        let seed = node_seed(self.dropout_seed, id);
        let first_image_index = self.first_image;
        let groups = match mode {
            Mode::Train => &self.gradient_groups[..],
            Mode::Eval => &[],
        };
        let sync = match (mode, sync) {
            (Mode::Train, Some(cluster)) if matches!(node.layer, Layer::BatchNorm { .. }) => Some(SyncBn {
                cluster,
                images: self.loss_images,
                groups: &self.gradient_groups,
                tree: &mut self.tree_f64,
                tree_f32: &mut self.tree,
            }),
            _ => None,
        };
        let ws = &mut self.workspace;
        let run = |bufs: &[Vec<f32>], out: &mut [f32]| -> Result<()> {
            let mut y = images_mut(out, p, batch);
            match &node.layer {
                Layer::Input => {
                    for n in 0..batch {
                        y.get_mut(n).copy_from_slice(input.get(n));
                    }
                }
                Layer::Concat => {
                    let mut offset = 0;
                    for (&part, &placed) in node.inputs.iter().zip(in_place) {
                        let pp = places[part];
                        if !placed {
                            shape::concat_part_images(images(bufs, pp, batch), offset, &mut y);
                        }
                        offset += pp.len;
                    }
                }
                Layer::AddScaled { scale, relu } => {
                    let (residual, branch) = (
                        images(bufs, places[node.inputs[0]], batch),
                        images(bufs, places[node.inputs[1]], batch),
                    );
                    shape::add_scaled_images(residual, branch, *scale, *relu, &mut y);
                }
                _ => {
                    let input = node.inputs[0];
                    let x = images(bufs, places[input], batch);
                    let saved = Saved {
                        argmax,
                        seed,
                        first_image: first_image_index,
                        stats,
                        groups,
                        sync,
                    };
                    forward_node(graph, node, input, x, &mut y, saved, params, node_run, mode, ws)?;
                }
            }
            Ok(())
        };
        if matches!(node.layer, Layer::Flatten) && !self.plan.flatten_reorders(graph, id) {
            return Ok(());
        }
        with_buffer(&mut self.acts, p.buffer, run).map_err(|e| e.in_node(&node.name))
    }
}
