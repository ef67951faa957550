//! The executor's buffers and per-pass state, and the passes that are not the forward or backward sweep:
//! building them, resolving each convolution's algorithm, the loss and the running-statistics update.

use super::{BatchLoss, BranchSchedule, Mode, NodeTime};
use crate::blocked;
use crate::error::{Error, Result};
use crate::graph::builder::{Graph, Layer, Node, NodeId};
use crate::graph::gradient_slots::GradientSlots;
use crate::graph::plan::{Layout, Plan, PlanOptions};
use crate::memory::{self, MemoryNeed};
use crate::microkernel::LANES;
use crate::ops::batchnorm::ChannelStats;
use crate::ops::conv::direct::DirectWeights;
use crate::ops::conv::winograd_blocked::{self, WinogradWeights};
use crate::ops::conv::{self, Conv2d, ConvAlgo, ConvGeometry};
use crate::ops::loss;
use crate::ops::pool;
use crate::reduction::{GradientShard, TreeSum};
use crate::workspace::{Workspace, WorkspaceSize};
use std::ops::Range;

/// The convolution weights an executor keeps packed, per node.
pub(super) struct PackedWeights {
    /// For [`ConvAlgo::Direct`]: packed at the first forward pass, again after the parameters change.
    pub(super) direct: Vec<Option<DirectWeights>>,
    /// Transformed for Winograd where the plan runs it in passes of mode `winograd_mode`
    /// ([`Plan::winograd_tile`]): at the first pass after the parameters change, or after a pass of
    /// the other mode.
    pub(super) winograd: Vec<Option<WinogradWeights>>,
    /// The input-gradient weights of `winograd`'s convolutions ([`WinogradWeights::for_input_grad`]),
    /// when `winograd_mode` is training.
    pub(super) winograd_input_grad: Vec<Option<WinogradWeights>>,
    /// The mode of the pass `winograd` was transformed for, `None` when the parameters may have
    /// changed since.
    pub(super) winograd_mode: Option<Mode>,
}

impl PackedWeights {
    /// Node `id`'s Winograd weights and input-gradient weights when the last pass trained with them:
    /// what its backward pass runs.
    pub(super) fn winograd_training(&self, id: NodeId) -> Option<(&WinogradWeights, &WinogradWeights)> {
        if self.winograd_mode != Some(Mode::Train) {
            return None;
        }
        self.winograd[id].as_ref().zip(self.winograd_input_grad[id].as_ref())
    }
}

/// Everything an executor holds besides its model.
pub(super) struct State {
    pub(super) plan: Plan,
    pub(super) capacity: usize,
    /// Images in the last forward pass.
    pub(super) batch: usize,
    /// Per node running [`ConvAlgo::Direct`]: its weights, packed at the first forward pass.
    pub(super) packed: PackedWeights,
    /// Whether the parameters may have changed since the weights in `packed` were packed.
    pub(super) packed_stale: bool,
    pub(super) branches: BranchSchedule,
    pub(super) profile: Option<Vec<NodeTime>>,
    pub(super) acts: Vec<Vec<f32>>,
    /// Per buffer: its gradient while its slot is lent to it in a backward pass (else empty).
    pub(super) grads: Vec<Vec<f32>>,
    /// Which gradient buffers share memory ([`GradientSlots`]), and the slots' memory while no buffer
    /// holds it (allocated on the first backward pass).
    pub(super) gradient_slots: GradientSlots,
    pub(super) grad_store: Vec<Vec<f32>>,
    /// Every gradient buffer in its own slot, kept after backward ([`super::Executor::set_keep_node_grads`]).
    pub(super) keep_node_grads: bool,
    pub(super) argmax: Vec<Vec<u32>>,
    /// Per batch-norm node, the statistics its last forward pass normalized with.
    pub(super) bn_stats: Vec<ChannelStats>,
    /// The mode of the last forward pass (backward and the running-statistics update follow it).
    pub(super) mode: Mode,
    /// Dropout's seed for the current pass; each training forward moves it on.
    pub(super) dropout_seed: u64,
    /// Softmax probabilities per loss head: the output's, then each auxiliary output's.
    pub(super) probabilities: Vec<Vec<f32>>,
    /// Nodes the main output depends on; the others (auxiliary heads) are skipped in eval.
    pub(super) main_path: Vec<bool>,
    /// The labels of the last loss.
    pub(super) labels: Vec<usize>,
    /// Label smoothing for training losses.
    pub(super) label_smoothing: f32,
    pub(super) param_grads: Vec<Vec<f32>>,
    /// The images the loss's mean is over: the batch, or the global batch a shard belongs to.
    pub(super) loss_images: usize,
    /// The global batch index of the batch's first image (a rank's shard starts inside the global
    /// batch): dropout draws each image's mask by that index, so a shard draws the masks the whole
    /// batch would.
    pub(super) first_image: usize,
    /// Gradient groups a whole batch is cut into ([`super::Executor::set_gradient_groups`]).
    pub(super) groups_per_batch: usize,
    /// The batch's gradient groups ([`crate::reduction`]): ranges of its images, each group's parameter
    /// gradients computed from zero and summed in `tree`'s fixed order.
    pub(super) gradient_groups: Vec<Range<usize>>,
    pub(super) tree: TreeSum,
    /// The float64 tree of synchronized batch norms' sums.
    pub(super) tree_f64: TreeSum<f64>,
    /// Whether training batch norms take their statistics over the global batch
    /// ([`super::Executor::set_sync_batch_norm`]).
    pub(super) sync_batch_norm: bool,
    /// Scratch for the whole-batch passes, sized for every node and the algorithm it runs.
    pub(super) workspace: Workspace,
    /// Scratch for each chain of a branch group run concurrently, sized for one image.
    pub(super) chain_workspaces: Vec<Workspace>,
}

impl State {
    /// Plans `graph` and allocates activation buffers for batches of up to `capacity` images. Gradient
    /// buffers are allocated on the first backward pass, so inference-only executors never hold them.
    pub(super) fn new(graph: &Graph, capacity: usize) -> Result<State> {
        if capacity == 0 {
            return Err(Error::config("executor", "the batch capacity must be at least 1"));
        }
        // Refused with the sizes before anything is allocated, rather than aborted on an allocation.
        memory_check(graph, PlanOptions::default(), capacity)?;
        let plan = Plan::for_capacity(graph, PlanOptions::default(), capacity)?;
        let (acts, argmax) = buffers(graph, &plan, capacity)?;
        let chains = plan.branch_groups.iter().map(|g| g.chains.len()).max().unwrap_or(0);
        let classes = graph.output_len();
        Ok(State {
            capacity,
            batch: 0,
            branches: BranchSchedule::Auto,
            profile: None,
            acts,
            grads: Vec::new(),
            gradient_slots: gradient_slots(graph, &plan, false),
            grad_store: Vec::new(),
            keep_node_grads: false,
            argmax,
            bn_stats: vec![ChannelStats::default(); graph.nodes.len()],
            mode: Mode::Eval,
            dropout_seed: 0,
            probabilities: (0..1 + graph.aux_outputs.len())
                .map(|_| memory::zeroed(classes * capacity, "softmax probabilities"))
                .collect::<Result<_>>()?,
            main_path: graph.main_path(),
            labels: Vec::with_capacity(capacity),
            label_smoothing: 0.0,
            loss_images: 0,
            first_image: 0,
            groups_per_batch: 1,
            gradient_groups: Vec::new(),
            tree: TreeSum::default(),
            tree_f64: TreeSum::default(),
            sync_batch_norm: false,
            // Running statistics get no gradient: an empty one, which optimizers skip.
            param_grads: graph
                .params
                .iter()
                .map(|p| vec![0.0; if p.trainable { p.len() } else { 0 }])
                .collect(),
            packed: PackedWeights {
                direct: vec![None; graph.nodes.len()],
                winograd: vec![None; graph.nodes.len()],
                winograd_input_grad: vec![None; graph.nodes.len()],
                winograd_mode: None,
            },
            packed_stale: true,
            workspace: Workspace::try_with_size(workspace_size(graph, &plan, capacity)?)?,
            chain_workspaces: (0..chains)
                .map(|_| Workspace::try_with_size(workspace_size(graph, &plan, 1)?))
                .collect::<Result<_>>()?,
            plan,
        })
    }

    /// See [`super::Executor::set_plan_options`]: plans again, and reallocates the buffers whose
    /// layout changed their size (gradients on the next backward pass).
    pub(super) fn set_plan_options(&mut self, graph: &Graph, options: PlanOptions) -> Result<()> {
        let plan = Plan::for_capacity(graph, options, self.capacity)?;
        self.workspace
            .try_reserve(workspace_size(graph, &plan, self.capacity)?)?;
        let per_image = workspace_size(graph, &plan, 1)?;
        for ws in &mut self.chain_workspaces {
            ws.try_reserve(per_image)?;
        }
        let chains = plan.branch_groups.iter().map(|g| g.chains.len()).max().unwrap_or(0);
        while self.chain_workspaces.len() < chains {
            self.chain_workspaces.push(Workspace::try_with_size(per_image)?);
        }
        self.chain_workspaces.truncate(chains);
        if plan.buffer_image_len != self.plan.buffer_image_len || plan.lens != self.plan.lens {
            (self.acts, self.argmax) = buffers(graph, &plan, self.capacity)?;
            self.labels.clear();
        }
        self.set_gradient_slots(gradient_slots(graph, &plan, self.keep_node_grads));
        // Weights packed for another precision are packed afresh (repacking keeps a packing's precision).
        if plan.options.bf16_kernel() != self.plan.options.bf16_kernel() {
            self.packed.direct.iter_mut().for_each(|direct| *direct = None);
        }
        self.plan = plan;
        self.packed_stale = true;
        Ok(())
    }

    /// Packs the weights of every convolution that runs [`ConvAlgo::Direct`] when the parameters may
    /// have changed since the last packing (an optimizer step, `param_mut`, `set_params`), so a
    /// forward pass never packs and an unchanged model is packed once; and the Winograd transforms of
    /// a pass of `mode` (training: the forward's and the input gradient's). Only the first packing
    /// allocates.
    pub(super) fn pack_weights(&mut self, graph: &Graph, params: &[Vec<f32>], mode: Mode) -> Result<()> {
        if self.packed_stale {
            for (id, node) in graph.nodes.iter().enumerate() {
                let Layer::Conv { conv, weight, bias, .. } = &node.layer else {
                    continue;
                };
                if self.plan.conv_algos[id] != Some(ConvAlgo::Direct) {
                    self.packed.direct[id] = None;
                    continue;
                }
                let (w, b) = (&params[*weight], bias.map(|b| params[b].as_slice()));
                match &mut self.packed.direct[id] {
                    Some(packed) => packed.repack(w, b),
                    slot => {
                        let g = one_image_geometry(graph, node, conv)?;
                        *slot = Some(DirectWeights::with_precision(&g, w, b, self.plan.options.bf16_kernel()))
                    }
                }
            }
            self.packed_stale = false;
            self.packed.winograd_mode = None;
        }
        if self.packed.winograd_mode != Some(mode) {
            let training = mode == Mode::Train;
            for (id, node) in graph.nodes.iter().enumerate() {
                let (Layer::Conv { conv, weight, bias, .. }, Some(tile)) =
                    (&node.layer, self.plan.winograd_tile(id, training))
                else {
                    self.packed.winograd[id] = None;
                    self.packed.winograd_input_grad[id] = None;
                    continue;
                };
                let (w, b) = (&params[*weight], bias.map(|b| params[b].as_slice()));
                let g = one_image_geometry(graph, node, conv)?;
                match &mut self.packed.winograd[id] {
                    Some(packed) if packed.tile() == tile => packed.repack(w, b),
                    slot => *slot = Some(WinogradWeights::new(&g, tile, w, b)),
                }
                match &mut self.packed.winograd_input_grad[id] {
                    _ if !training => {}
                    Some(packed) if packed.tile() == tile => packed.repack(w, None),
                    slot => *slot = Some(WinogradWeights::for_input_grad(&g, tile, w)),
                }
            }
            self.packed.winograd_mode = Some(mode);
        }
        Ok(())
    }

    pub(super) fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| vec![NodeTime::default(); self.plan.places.len()]);
    }

    /// See [`super::Executor::update_running_statistics`].
    pub(super) fn update_running_statistics(&self, graph: &Graph, params: &mut [Vec<f32>]) {
        if self.mode != Mode::Train {
            return;
        }
        for (node, stats) in graph.nodes.iter().zip(&self.bn_stats) {
            if let Layer::BatchNorm {
                bn,
                running_mean,
                running_var,
                ..
            } = &node.layer
            {
                let (mean, var) = super::two_mut(params, *running_mean, *running_var);
                bn.update_running_statistics(stats, mean, var);
            }
        }
    }

    /// See [`super::Executor::loss`].
    pub(super) fn loss(&mut self, graph: &Graph, labels: &[usize]) -> Result<BatchLoss> {
        let classes = graph.output_len();
        loss::check_labels("loss", labels, self.batch, classes)?;
        let label_smoothing = self.loss_smoothing();
        let mut total = 0.0;
        for (head, (node, weight)) in self.loss_heads(graph).into_iter().enumerate() {
            let p = self.plan.places[node];
            let logits = &self.acts[p.buffer][p.offset..];
            let probabilities = &mut self.probabilities[head][..labels.len() * classes];
            total +=
                weight as f64 * loss::forward_rows(logits, p.stride, classes, labels, label_smoothing, probabilities);
        }
        let out = self.plan.places[graph.output];
        let correct = loss::correct_rows(&self.acts[out.buffer][out.offset..], out.stride, classes, labels);
        self.labels.clear();
        self.labels.extend_from_slice(labels);
        Ok(BatchLoss { loss: total, correct })
    }

    /// Makes the next backward pass's gradients those of `shard` of a global batch: the loss averaged
    /// over the global batch, the parameter gradients summed over the shard's groups.
    pub(super) fn set_gradient_shard(&mut self, shard: &GradientShard) {
        self.loss_images = shard.split.batch;
        self.first_image = shard.images().start;
        self.gradient_groups.clear();
        self.gradient_groups.extend(shard.local_groups());
    }

    /// The label smoothing of the loss after the last forward: none after an eval forward.
    pub(super) fn loss_smoothing(&self) -> f32 {
        match self.mode {
            Mode::Train => self.label_smoothing,
            Mode::Eval => 0.0,
        }
    }

    /// The output and, after a training forward, the auxiliary heads, each with its loss weight.
    pub(super) fn loss_heads(&self, graph: &Graph) -> Vec<(NodeId, f32)> {
        let aux = if self.mode == Mode::Train {
            &graph.aux_outputs[..]
        } else {
            &[]
        };
        std::iter::once((graph.output, 1.0))
            .chain(aux.iter().copied())
            .collect()
    }
}

/// The gradient slots of `plan`: shared, or one per buffer when every node's gradient is kept.
pub(super) fn gradient_slots(graph: &Graph, plan: &Plan, keep_node_grads: bool) -> GradientSlots {
    if keep_node_grads {
        GradientSlots::unshared(graph, plan)
    } else {
        GradientSlots::shared(graph, plan)
    }
}

impl State {
    /// Uses `slots` from the next backward pass on (the gradients held now are dropped if they change).
    pub(super) fn set_gradient_slots(&mut self, slots: GradientSlots) {
        if slots != self.gradient_slots {
            self.gradient_slots = slots;
            self.grads = Vec::new();
            self.grad_store = Vec::new();
        }
    }

    /// Lends every buffer's slot back (the end of the last backward pass), allocating the slots the
    /// first time, so a backward pass can open its buffers.
    pub(super) fn reset_gradient_slots(&mut self) -> Result<()> {
        let buffers = self.plan.buffer_image_len.len();
        if self.grads.len() != buffers {
            self.grads = vec![Vec::new(); buffers];
        }
        if self.grad_store.is_empty() {
            self.grad_store = self
                .gradient_slots
                .slot_image_len
                .iter()
                .map(|&len| crate::memory::zeroed(len * self.capacity, "activation gradients"))
                .collect::<Result<_>>()?;
        }
        for (b, grad) in self.grads.iter_mut().enumerate() {
            if let (false, Some(s)) = (grad.is_empty(), self.gradient_slots.slot[b]) {
                self.grad_store[s] = std::mem::take(grad);
            }
        }
        Ok(())
    }
}

/// Opens buffer `b`'s gradient: its slot's memory, lent to it, zeroed for `batch` images.
pub(super) fn open_gradient(
    slots: &GradientSlots,
    store: &mut [Vec<f32>],
    grads: &mut [Vec<f32>],
    b: usize,
    image_len: usize,
    batch: usize,
) {
    let s = slots.slot[b].expect("an opened buffer has a slot");
    let mut memory = std::mem::take(&mut store[s]);
    assert!(
        !memory.is_empty() || image_len * batch == 0,
        "gradient slot {s} is lent twice"
    );
    memory[..image_len * batch].fill(0.0);
    grads[b] = memory;
}

/// Closes buffer `b`'s gradient: its memory goes back to its slot.
pub(super) fn close_gradient(slots: &GradientSlots, store: &mut [Vec<f32>], grads: &mut [Vec<f32>], b: usize) {
    let s = slots.slot[b].expect("a closed buffer has a slot");
    store[s] = std::mem::take(&mut grads[b]);
}

/// Per buffer (activations) or node (argmaxes), its values for every image.
type Buffers<T> = Vec<Vec<T>>;

/// Activation buffers for `capacity` images, and the max pools' argmaxes and dropouts' kept flags (one
/// per output value).
fn buffers(graph: &Graph, plan: &Plan, capacity: usize) -> Result<(Buffers<f32>, Buffers<u32>)> {
    let acts = plan
        .buffer_image_len
        .iter()
        .map(|&len| memory::zeroed(len * capacity, "activations"))
        .collect::<Result<_>>()?;
    let argmax = graph
        .nodes
        .iter()
        .zip(&plan.lens)
        .zip(&plan.layouts)
        .enumerate()
        .map(
            |(id, ((_, &len), &layout))| match saved_image_len(graph, id, layout, len) {
                0 => Ok(Vec::new()),
                saved => memory::zeroed(saved * capacity, "max-pool argmaxes"),
            },
        )
        .collect::<Result<_>>()?;
    Ok((acts, argmax))
}

/// What node `id` (`len` output values per image in `layout`) keeps from its forward pass for its
/// backward, in u32s per image: a dropout its kept flags and a max pool its argmaxes, one per output
/// value; a max pool on the blocked layout its offsets, a u16 per output value ([`keeps_offsets`]).
pub(super) fn saved_image_len(graph: &Graph, id: NodeId, layout: Layout, len: usize) -> usize {
    match &graph.nodes[id].layer {
        Layer::MaxPool(_) if keeps_offsets(graph, id, layout) => len.div_ceil(2),
        Layer::MaxPool(_) | Layer::Dropout(_) => len,
        _ => 0,
    }
}

/// Whether max pool `id` keeps each maximum's offset from its window's corner in a u16
/// ([`crate::ops::pool_blocked::max_pool_forward_blocked_offsets`]) rather than its argmax: on the
/// blocked layout, where the offsets fit.
pub(super) fn keeps_offsets(graph: &Graph, id: NodeId, layout: Layout) -> bool {
    let node = &graph.nodes[id];
    let (Layer::MaxPool(pool), Some(&input)) = (&node.layer, node.inputs.first()) else {
        return false;
    };
    let [c, h, w] = graph.nodes[input].shape;
    layout == Layout::Blocked
        && pool
            .window
            .geometry("max_pool2d", [1, c, h, w])
            .is_ok_and(|g| crate::ops::pool_blocked::offsets_fit(&g))
}

/// A u32 buffer as u16s: where a max pool keeps its offsets, two to a u32.
pub(super) fn as_u16_mut(values: &mut [u32]) -> &mut [u16] {
    // SAFETY: u16 has no validity requirement and half u32's alignment; the halves cover exactly the
    // same memory, borrowed mutably for the same lifetime.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u16>(), 2 * values.len()) }
}

/// See [`as_u16_mut`].
pub(super) fn as_u16(values: &[u32]) -> &[u16] {
    // SAFETY: as for `as_u16_mut`, read only.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u16>(), 2 * values.len()) }
}
/// Refuses a `capacity` whose inference buffers (activations, workspace, parameters' packed copies) do
/// not fit in the memory available, naming the need and the largest capacity that fits.
fn memory_check(graph: &Graph, options: PlanOptions, capacity: usize) -> Result<()> {
    let [c, h, w] = graph.input_shape();
    super::Executor::check_memory(
        graph,
        options,
        capacity,
        false,
        &format!("a batch of {capacity} at {c}x{h}x{w}"),
        |k| match k {
            Some(k) => format!("batches of at most {k} images fit"),
            None => "use a smaller input size".to_string(),
        },
    )
}

/// What an executor for `graph` planned with `options` at batch `capacity` allocates, in bytes
/// ([`super::Executor::memory_need`]).
pub(super) fn memory_need(graph: &Graph, options: PlanOptions, capacity: usize, training: bool) -> Result<MemoryNeed> {
    const F32: u64 = 4;
    let bytes = |values: usize| (values as u64).saturating_mul(F32);
    let per_batch = |values: usize| bytes(values).saturating_mul(capacity as u64);
    // Sizes grow linearly with the batch: a batch whose one-image need already passes any memory is
    // refused from that, before a plan at its size multiplies out.
    if capacity > 1 {
        let one = memory_need(graph, options, 1, training)?;
        if one.total().saturating_mul(capacity as u64) >= u64::MAX / 4 {
            return Ok(MemoryNeed {
                activations: u64::MAX / 4,
                ..MemoryNeed::default()
            });
        }
    }
    let plan = Plan::for_capacity(graph, options, capacity)?;
    let act_values: usize = plan.buffer_image_len.iter().sum();
    let masked: usize = graph
        .nodes
        .iter()
        .zip(&plan.lens)
        .zip(&plan.layouts)
        .enumerate()
        .map(|(id, ((_, &len), &layout))| saved_image_len(graph, id, layout, len))
        .sum();
    let heads = 1 + graph.aux_outputs.len();
    let activations = per_batch(act_values)
        .saturating_add(per_batch(masked))
        .saturating_add(per_batch(heads * graph.output_len()));
    let ws = workspace_size(graph, &plan, capacity)?;
    let one = workspace_size(graph, &plan, 1)?;
    let chains = plan.branch_groups.iter().map(|g| g.chains.len()).max().unwrap_or(0);
    let ws_values = |w: WorkspaceSize| w.regions + w.partials + w.shared;
    let workspace = bytes(ws_values(ws)).saturating_add(bytes(ws_values(one)).saturating_mul(chains as u64));
    let params: usize = graph.params.iter().map(|p| p.len()).sum();
    let trainable: usize = graph.params.iter().filter(|p| p.trainable).map(|p| p.len()).sum();
    // Packed copies: the direct path's (forward and input gradient, channels rounded up to whole
    // blocks) and Winograd's transformed weights.
    let mut packed = 0usize;
    for (id, node) in graph.nodes.iter().enumerate() {
        if let Layer::Conv { conv, .. } = &node.layer {
            let [ic, ..] = graph.nodes[node.inputs[0]].shape;
            let blocked = blocked::blocks(ic) * blocked::blocks(conv.out_channels) * LANES * LANES;
            let copies = if training { 2 } else { 1 };
            let direct = copies * blocked * conv.kernel[0] * conv.kernel[1];
            // bf16 keeps a bf16 copy beside the float32 packing: half as many bytes again.
            packed += if plan.options.bf16_kernel().is_some() {
                direct + direct / 2
            } else {
                direct
            };
            if let Some(tile) = plan.winograd_tiles[id].or(plan.winograd_training_tiles[id]) {
                packed += copies * blocked * (tile + 2) * (tile + 2);
            }
        }
    }
    // A training run's optimizer holds at most three values per parameter (centered RMSProp with
    // momentum; Adam two).
    let optimizer = if training { 3 * params } else { 0 };
    Ok(MemoryNeed {
        activations,
        gradients: if training {
            let slots = GradientSlots::shared(graph, &plan);
            per_batch(slots.image_len()).saturating_add(bytes(trainable))
        } else {
            0
        },
        workspace,
        parameters: bytes(params + packed + optimizer),
        inputs: 0,
    })
}

/// The geometry of convolution `node` (`conv`) on one image of its input: what packing its weights needs.
fn one_image_geometry(graph: &Graph, node: &Node, conv: &Conv2d) -> Result<ConvGeometry> {
    let [c, h, w] = graph.nodes[node.inputs[0]].shape;
    conv.geometry([1, c, h, w]).map_err(|e| e.in_node(&node.name))
}

/// The workspace that every convolution (with the algorithm it runs) and max pool of `graph` fits in at
/// batch `capacity`.
fn workspace_size(graph: &Graph, plan: &Plan, capacity: usize) -> Result<WorkspaceSize> {
    let mut size = WorkspaceSize::default();
    for (id, (node, algo)) in graph.nodes.iter().zip(&plan.conv_algos).enumerate() {
        let [c, h, w] = graph.nodes[node.inputs.first().copied().unwrap_or(0)].shape;
        match (&node.layer, algo) {
            (Layer::Conv { conv, .. }, Some(algo)) => {
                let g = conv.geometry([capacity, c, h, w])?;
                size = size.max(conv::workspace(&g, *algo));
                if let Some(tile) = plan.winograd_tiles[id] {
                    size = size.max(winograd_blocked::workspace(&g, tile));
                }
                if let Some(tile) = plan.winograd_training_tiles[id] {
                    let input_grad = winograd_blocked::input_grad_geometry(&g);
                    size = size
                        .max(winograd_blocked::workspace(&g, tile))
                        .max(winograd_blocked::workspace(&input_grad, tile))
                        .max(winograd_blocked::weight_grad_workspace(&g, tile));
                }
            }
            (Layer::MaxPool(pool), _) => {
                let g = pool.window.geometry("max_pool2d", [capacity, c, h, w])?;
                size = size.max(pool::max_pool_workspace(&g));
            }
            _ => {}
        }
    }
    Ok(size)
}
