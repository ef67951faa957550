//! Runs a planned graph: forward for inference or training, the loss, and backward in exact reverse
//! order. An [`Executor`] owns its model (graph and parameters) and every buffer the passes use
//! (activations, their gradients, max-pool argmaxes, softmax probabilities, parameter gradients), each
//! allocated once for `capacity` images; batches up to that size reuse them.
//!
//! The buffers and the passes over them are `State` (`state.rs`); the forward pass is in `forward.rs`,
//! the backward pass in `backward.rs`, concurrent Inception branches in `branches.rs`.

use super::builder::Graph;
use super::plan::{Layout, Place, Plan, PlanOptions, Precision};
use crate::distributed::{Cluster, SingleProcess};
use crate::error::{Error, Result};
use crate::microkernel::Isa;
use crate::models::Model;
use crate::ops::conv::ConvAlgo;
use crate::optim::Optimizer;
use crate::reduction::GradientShard;
use crate::tensor::{Images, ImagesMut};
use crate::workspace::{Workspace, WorkspaceSize};
use std::time::Duration;

mod backward;
mod branches;
mod forward;
mod state;
mod sync_bn;

use state::State;

/// Inference or training behaviour (dropout, batch-norm statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deterministic inference.
    Eval,
    /// Training: batch statistics, dropout on.
    Train,
}

/// Loss and accuracy of one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchLoss {
    /// Batch-mean cross-entropy.
    pub loss: f64,
    /// Images whose largest logit is their label.
    pub correct: usize,
}

/// How the forward pass runs the branches of an Inception block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BranchSchedule {
    /// Concurrently when the batch has fewer images than there are threads, otherwise one op at a time
    /// with the batch split across the cores.
    #[default]
    Auto,
    /// One node at a time.
    Sequential,
    /// Branches concurrently, image by image.
    Concurrent,
}

/// Time one node took, summed over the passes since profiling started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeTime {
    /// Forward passes timed.
    pub calls: usize,
    /// Total forward time.
    pub forward: Duration,
    /// Total backward time (the node's input, weight and bias gradients).
    pub backward: Duration,
    /// Forward passes in which this node (a concat) ran its branches concurrently; their time is
    /// booked here, on the concat.
    pub concurrent: usize,
}

/// A model and the buffers that run it.
///
/// Training is [`Executor::train_step`]; inference is [`Executor::forward`] in [`Mode::Eval`] followed by
/// [`Executor::output`]. The finer calls (`forward`, `loss`, `backward`) are public for tests and tools
/// that inspect one pass; they check their order at run time.
///
/// ```
/// use incept::graph::{Executor, GraphBuilder, Mode};
/// use incept::models::Model;
/// use incept::ops::conv::Conv2d;
/// use incept::optim::{Adam, Optimizer};
/// use incept::tensor::Images;
///
/// // A 3x3 convolution + ReLU, global average pool and a 10-way classifier on 1x8x8 images.
/// let mut b = GraphBuilder::new();
/// let x = b.input("input", [1, 8, 8])?;
/// let c = b.conv("conv", x, Conv2d::new(1, 4, [3, 3]), true, true)?;
/// let p = b.global_avg_pool("pool", c)?;
/// let f = b.flatten("flat", p)?;
/// let out = b.linear("fc", f, 10, true)?;
/// let model = Model::init(b.build(out)?, 0);
/// let lens: Vec<usize> = model.graph.params.iter().map(|p| p.len()).collect();
///
/// let mut exec = Executor::new(model, 2)?; // batches of up to 2 images
/// let mut adam = Optimizer::Adam(Adam::new(&lens));
/// let images = vec![0.5f32; 2 * 64];
/// let step = exec.train_step(Images::dense(&images, 2, 64), &[3, 7], &mut adam, 1e-3)?;
/// assert!(step.loss.is_finite());
///
/// exec.forward(Images::dense(&images[..64], 1, 64), Mode::Eval)?;
/// assert_eq!(exec.output_vec().len(), 10); // one image's logits
/// # Ok::<(), incept::Error>(())
/// ```
pub struct Executor {
    model: Model,
    state: State,
}

impl Executor {
    /// Plans `model`'s graph and allocates activation buffers for batches of up to `capacity` images.
    /// Gradient buffers are allocated on the first backward pass, so inference-only executors never hold
    /// them. An error if a parameter's length is not the one its spec gives, or if the buffers would not
    /// fit in the memory available ([`Executor::check_memory`]; allocations are fallible too).
    pub fn new(model: Model, capacity: usize) -> Result<Executor> {
        check_params(&model.graph, &model.params)?;
        let state = State::new(&model.graph, capacity)?;
        Ok(Executor { model, state })
    }

    /// What an executor for `graph` planned with `options` allocates for batches of up to `capacity`
    /// images, in bytes: for inference, or with `training` also the gradients and the optimizer's state
    /// (at most three values per parameter). [`Executor::new`] refuses a capacity whose inference need
    /// exceeds [`crate::memory::available`]; a training caller checks this need first.
    pub fn memory_need(
        graph: &Graph,
        options: PlanOptions,
        capacity: usize,
        training: bool,
    ) -> Result<crate::memory::MemoryNeed> {
        state::memory_need(graph, options, capacity, training)
    }

    /// Refuses an executor for `graph` at batch `capacity` (with gradients when `training`) whose
    /// [`Executor::memory_need`] exceeds [`crate::memory::available`]: an error saying that `what`
    /// ("batch 128 at 96x96") needs so much, what is available, and `advice` for the largest batch that
    /// fits (`None`: not even one image).
    pub fn check_memory(
        graph: &Graph,
        options: PlanOptions,
        capacity: usize,
        training: bool,
        what: &str,
        advice: impl Fn(Option<usize>) -> String,
    ) -> Result<()> {
        let need = |b| state::memory_need(graph, options, b, training);
        crate::memory::check_batch(capacity, what, need, advice)
    }

    /// The graph this executor runs.
    pub fn graph(&self) -> &Graph {
        &self.model.graph
    }

    /// The parameters, in [`Graph::params`] order.
    pub fn params(&self) -> &[Vec<f32>] {
        &self.model.params
    }

    /// Parameter `index`, writable (its length is fixed by its spec).
    pub fn param_mut(&mut self, index: usize) -> &mut [f32] {
        self.state.packed_stale = true;
        &mut self.model.params[index]
    }

    /// Replaces every parameter; an error naming the first one whose length does not match its spec
    /// (the executor's parameters are then unchanged).
    pub fn set_params(&mut self, params: Vec<Vec<f32>>) -> Result<()> {
        check_params(&self.model.graph, &params)?;
        self.model.params = params;
        self.state.packed_stale = true;
        Ok(())
    }

    /// The model (graph and parameters).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Gives the model back.
    pub fn into_model(self) -> Model {
        self.model
    }

    /// Forces one convolution algorithm on every convolution (`Auto` restores the plan's per-layer
    /// choice); an error naming the first layer it cannot run. Scratch is reserved for it, so steps still
    /// allocate nothing.
    pub fn set_conv_algo(&mut self, algo: ConvAlgo) -> Result<()> {
        let options = PlanOptions {
            conv_algo: algo,
            ..self.state.plan.options
        };
        self.set_plan_options(options)
    }

    /// Runs every microkernel call on `isa` (the default is the fastest this CPU has); an error if
    /// this CPU cannot run it. Tests use it to hold each instruction set's build to the same references.
    pub fn set_isa(&mut self, isa: Isa) -> Result<()> {
        let options = PlanOptions {
            isa,
            ..self.state.plan.options
        };
        self.set_plan_options(options)
    }

    /// Runs the convolutions in `precision` ([`Precision`]; the default is float32).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        let options = PlanOptions {
            precision,
            ..self.state.plan.options
        };
        self.set_plan_options(options)
    }

    /// Plans again with `options` (see [`Executor::set_conv_algo`] and [`Executor::set_isa`]).
    pub fn set_plan_options(&mut self, options: PlanOptions) -> Result<()> {
        self.state.set_plan_options(&self.model.graph, options)
    }

    /// Chooses how the forward pass schedules Inception branches.
    pub fn set_branch_schedule(&mut self, schedule: BranchSchedule) {
        self.state.branches = schedule;
    }

    /// Label smoothing for the training loss (the default is none); an error unless it is in `[0, 1)`.
    /// The loss after an eval forward is always plain cross-entropy.
    pub fn set_label_smoothing(&mut self, eps: f32) -> Result<()> {
        if !(0.0..1.0).contains(&eps) {
            return Err(Error::config(
                "loss",
                format!("label smoothing must be in [0, 1), found {eps}"),
            ));
        }
        self.state.label_smoothing = eps;
        Ok(())
    }

    /// Starts (or, with `false`, stops) timing every node; starting clears earlier times.
    pub fn set_profiling(&mut self, on: bool) {
        self.state.set_profiling(on);
    }

    /// Time spent per node since profiling started, in node order (`None` when not profiling). A
    /// branch group run concurrently books its whole time on its concat node.
    pub fn profile(&self) -> Option<&[NodeTime]> {
        self.state.profile.as_deref()
    }

    /// The largest batch the buffers hold.
    pub fn capacity(&self) -> usize {
        self.state.capacity
    }

    /// The plan the buffers follow.
    pub fn plan(&self) -> &Plan {
        &self.state.plan
    }

    /// Runs the graph on `input` (`count` images of `c*h*w` values each).
    pub fn forward(&mut self, input: Images<'_>, mode: Mode) -> Result<()> {
        let (state, model) = (&mut self.state, &self.model);
        // On a worker of the pool, so each op's parallel loop starts from inside it instead of being
        // handed from the calling thread to the pool and back (dozens of hand-offs per pass).
        rayon::scope(move |_| {
            let sync = state.sync_batch_norm.then_some(&SingleProcess as &dyn Cluster);
            state.forward(&model.graph, &model.params, input, mode, None, sync)
        })
    }

    /// Softmax cross-entropy of the last forward's output against `labels`, batch-averaged (with the
    /// label smoothing set, after a training forward); keeps the probabilities for
    /// [`Executor::backward`]. After a training forward, each auxiliary head's loss is added with its
    /// weight (the accuracy counts the main output only).
    pub fn loss(&mut self, labels: &[usize]) -> Result<BatchLoss> {
        self.state.loss(&self.model.graph, labels)
    }

    /// Backward pass from the last [`Executor::loss`]: zeroes and fills every parameter gradient.
    pub fn backward(&mut self) -> Result<()> {
        let sync = self.state.sync_batch_norm.then_some(&SingleProcess as &dyn Cluster);
        self.state.backward(&self.model.graph, &self.model.params, sync)
    }

    /// Moves every batch norm's running statistics toward the statistics of the last forward pass, as
    /// PyTorch does during a training-mode forward. [`Executor::train_step`] calls it; after an eval
    /// forward it does nothing.
    pub fn update_running_statistics(&mut self) {
        self.state
            .update_running_statistics(&self.model.graph, &mut self.model.params);
    }

    /// One training step: a training forward on `images`, the loss against `labels` and, if the loss is
    /// finite, the running-statistics update, the backward pass and `optimizer`'s update of the
    /// parameters at learning rate `lr`. A non-finite loss leaves the parameters untouched (running
    /// statistics included) and is returned for the caller to report.
    pub fn train_step(
        &mut self,
        images: Images<'_>,
        labels: &[usize],
        optimizer: &mut Optimizer,
        lr: f32,
    ) -> Result<BatchLoss> {
        let loss = self.compute_gradients(images, labels)?;
        if loss.loss.is_finite() {
            self.apply_gradients(optimizer, lr);
        }
        Ok(loss)
    }

    /// The first half of [`Executor::train_step`]: the training forward, the loss and, if it is finite,
    /// the running-statistics update and the backward pass. Data-parallel training sums the gradients
    /// across processes ([`Executor::param_grads_mut`]) before [`Executor::apply_gradients`].
    pub fn compute_gradients(&mut self, images: Images<'_>, labels: &[usize]) -> Result<BatchLoss> {
        let shard = GradientShard::whole(images.count(), self.state.groups_per_batch);
        self.compute_shard_gradients(images, labels, &shard, &SingleProcess)
    }

    /// Makes training batch norms take their statistics (and their input gradient's sums) over the
    /// global batch of every rank, PyTorch's `SyncBatchNorm` (`crate::graph::executor` `sync_bn.rs`);
    /// off by default, when each executor normalizes by its own images as DistributedDataParallel does.
    pub fn set_sync_batch_norm(&mut self, on: bool) {
        self.state.sync_batch_norm = on;
    }

    /// Cuts every batch into `groups` gradient groups (one by default): each group's parameter
    /// gradients computed from zero, the groups summed in a fixed pairwise tree ([`crate::reduction`]),
    /// so that training here gives the bits of a data-parallel run over up to `groups` ranks.
    pub fn set_gradient_groups(&mut self, groups: usize) -> Result<()> {
        if groups == 0 {
            return Err(Error::config("executor", "the gradient groups must be at least 1"));
        }
        self.state.groups_per_batch = groups;
        Ok(())
    }

    /// [`Executor::compute_gradients`] for `shard` of a global batch (one rank's part in data-parallel
    /// training): the loss gradient is that of the mean over the global batch, and the parameter
    /// gradients are summed over the shard's groups in the fixed order of [`crate::reduction`], so the
    /// ranks' sums, added by [`crate::distributed::Cluster::sum_f32`], have one process's bits. The
    /// returned loss is the shard's own mean. With [`Executor::set_sync_batch_norm`], batch norms
    /// sum their statistics across `cluster`'s ranks, which must all make this call.
    pub fn compute_shard_gradients(
        &mut self,
        images: Images<'_>,
        labels: &[usize],
        shard: &GradientShard,
        cluster: &dyn Cluster,
    ) -> Result<BatchLoss> {
        if images.count() != shard.len() {
            return Err(Error::shape(
                "gradient shard",
                format!("{} images (groups {:?} of {:?})", shard.len(), shard.held, shard.split),
                format!("{} images", images.count()),
            ));
        }
        let sync = self.state.sync_batch_norm.then_some(cluster);
        self.state.forward(
            &self.model.graph,
            &self.model.params,
            images,
            Mode::Train,
            Some(shard),
            sync,
        )?;
        let loss = self.loss(labels)?;
        if loss.loss.is_finite() {
            self.update_running_statistics();
            self.state.backward(&self.model.graph, &self.model.params, sync)?;
        }
        Ok(loss)
    }

    /// The second half of [`Executor::train_step`]: `optimizer`'s update of the parameters from the
    /// current gradients at learning rate `lr`.
    pub fn apply_gradients(&mut self, optimizer: &mut Optimizer, lr: f32) {
        optimizer.step(&mut self.model.params, &self.state.param_grads, lr);
        self.state.packed_stale = true;
    }

    /// The scratch the executor holds, over all its workspaces: sized from the plan when the executor
    /// is built (and when [`Executor::set_conv_algo`] changes algorithms), never grown by a pass.
    pub fn workspace_size(&self) -> WorkspaceSize {
        let s = &self.state;
        std::iter::once(&s.workspace)
            .chain(&s.chain_workspaces)
            .map(Workspace::size)
            .fold(WorkspaceSize::default(), |total, w| WorkspaceSize {
                regions: total.regions + w.regions,
                partials: total.partials + w.partials,
                shared: total.shared + w.shared,
            })
    }

    /// Parameter gradients from the last backward pass, in [`Graph::params`] order.
    pub fn param_grads(&self) -> &[Vec<f32>] {
        &self.state.param_grads
    }

    /// [`Executor::param_grads`] for a caller that combines them before [`Executor::apply_gradients`]
    /// (data-parallel training sums them across processes).
    pub fn param_grads_mut(&mut self) -> &mut [Vec<f32>] {
        &mut self.state.param_grads
    }

    /// The output of the last forward pass: `batch` rows of [`Graph::output_len`] values.
    pub fn output(&self) -> Images<'_> {
        // The plan keeps the output (and every loss head) in NCHW.
        images(
            &self.state.acts,
            self.state.plan.places[self.model.graph.output],
            self.state.batch,
        )
    }

    /// Copies the output of the last forward pass into a dense vector (`batch * outputs`).
    pub fn output_vec(&self) -> Vec<f32> {
        let out = self.output();
        (0..out.count()).flat_map(|n| out.get(n).iter().copied()).collect()
    }

    /// The output of node `node` from the last forward pass, in NCHW order (a copy: the plan may
    /// keep it in the blocked layout).
    pub fn node_output(&self, node: usize) -> NodeValues {
        self.node_values(&self.state.acts, node)
    }

    /// The gradient of the loss with respect to node `node`'s output, from the last backward pass
    /// (for a ReLU-fused convolution, the gradient before its ReLU once backward has passed it), in
    /// NCHW order. `None` before a backward pass, and for a gradient the pass released once it was
    /// used (as PyTorch frees non-leaf gradients): [`Executor::set_keep_node_grads`] keeps them all.
    pub fn node_grad(&self, node: usize) -> Option<NodeValues> {
        let s = &self.state;
        let buffer = s.plan.places[node].buffer;
        s.grads
            .get(buffer)
            .is_some_and(|g| !g.is_empty())
            .then(|| self.node_values(&s.grads, node))
    }

    /// Keep every node's gradient after backward for [`Executor::node_grad`] (`true`), or let gradient
    /// buffers whose uses do not overlap share memory (`false`, the default: the backward pass then
    /// holds about a third of googlenet-d2l's activation gradients at once). The values computed are
    /// the same either way. Changing it drops the gradients held now.
    pub fn set_keep_node_grads(&mut self, keep: bool) {
        let s = &mut self.state;
        s.keep_node_grads = keep;
        s.set_gradient_slots(state::gradient_slots(&self.model.graph, &s.plan, keep));
    }

    fn node_values(&self, bufs: &[Vec<f32>], node: usize) -> NodeValues {
        let s = &self.state;
        let shape = self.model.graph.nodes[node].shape;
        let [c, h, w] = shape;
        let len = c * h * w;
        let stored = images(bufs, s.plan.places[node], s.batch);
        let mut values = vec![0.0; s.batch * len];
        for (n, out) in values.chunks_exact_mut(len.max(1)).enumerate() {
            match s.plan.layouts[node] {
                Layout::Nchw => out.copy_from_slice(stored.get(n)),
                Layout::Blocked => crate::blocked::to_nchw(stored.get(n), c, [h, w], out),
            }
        }
        NodeValues { values, len }
    }
}

/// One node's values (or gradients) for every image of the last pass, each image in NCHW order.
#[derive(Debug, Clone)]
pub struct NodeValues {
    values: Vec<f32>,
    len: usize,
}

impl NodeValues {
    /// Image `n`'s values.
    pub fn get(&self, n: usize) -> &[f32] {
        &self.values[n * self.len..][..self.len]
    }

    /// Images held.
    pub fn count(&self) -> usize {
        self.values.len().checked_div(self.len).unwrap_or(0)
    }

    /// The values as a batch of images.
    pub fn images(&self) -> Images<'_> {
        Images::dense(&self.values, self.count(), self.len)
    }
}

/// An error unless `params` has one vector per parameter of `graph`, each of its spec's length.
fn check_params(graph: &Graph, params: &[Vec<f32>]) -> Result<()> {
    if params.len() != graph.params.len() {
        return Err(Error::config(
            "executor",
            format!(
                "{} parameter tensors, the graph has {}",
                params.len(),
                graph.params.len()
            ),
        ));
    }
    for (spec, value) in graph.params.iter().zip(params) {
        if spec.len() != value.len() {
            return Err(Error::shape(
                &format!("parameter {}", spec.name),
                format!("{:?} = {} values", spec.shape, spec.len()),
                format!("{} values", value.len()),
            ));
        }
    }
    Ok(())
}

fn images(bufs: &[Vec<f32>], p: Place, batch: usize) -> Images<'_> {
    Images::strided(&bufs[p.buffer], batch, p.len, p.stride, p.offset)
}

fn images_mut(buf: &mut [f32], p: Place, batch: usize) -> ImagesMut<'_> {
    ImagesMut::strided(buf, batch, p.len, p.stride, p.offset)
}

/// Two distinct parameters mutably at once (`<[T]>::get_disjoint_mut` would do, from Rust 1.86; our
/// `rust-version` is 1.85). Panics if `a == b`: the graph builder gives every parameter its own index.
fn two_mut<T>(items: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b, "two_mut: the same parameter twice");
    if a < b {
        let (low, high) = items.split_at_mut(b);
        (&mut low[a], &mut high[0])
    } else {
        let (low, high) = items.split_at_mut(a);
        (&mut high[0], &mut low[b])
    }
}

/// Runs `f` with `bufs[buffer]` taken out for writing and the rest readable. The plan guarantees no node
/// reads the buffer it writes.
fn with_buffer<R>(bufs: &mut [Vec<f32>], buffer: usize, f: impl FnOnce(&[Vec<f32>], &mut [f32]) -> R) -> R {
    let mut out = std::mem::take(&mut bufs[buffer]);
    let result = f(bufs, &mut out);
    bufs[buffer] = out;
    result
}
