//! Runs a planned graph: forward for inference or training, the loss, and backward in exact reverse
//! order. Every buffer (activations, their gradients, max-pool argmaxes, softmax probabilities,
//! parameter gradients) is allocated once for `capacity` images; batches up to that size reuse them.
//! The backward pass is in `backward.rs`, concurrent Inception branches in `branches.rs`.

use super::builder::{Graph, Layer, Node, NodeId};
use super::plan::{Place, Plan};
use crate::error::{Error, Result};
use crate::ops::activation;
use crate::ops::batchnorm::ChannelStats;
use crate::ops::conv::{self, ConvAlgo};
use crate::ops::loss;
use crate::ops::pool::{self, max_pool_forward};
use crate::ops::shape;
use crate::optim::Optimizer;
use std::time::{Duration, Instant};

use crate::tensor::{Images, ImagesMut, ScratchDemand, reserve_scratch};

mod backward;
mod branches;

use branches::BranchRun;

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

/// The buffers of one graph and the code that runs it.
pub struct Executor {
    plan: Plan,
    capacity: usize,
    batch: usize,
    /// Per node: the convolution algorithm it runs (`None` for other nodes).
    algos: Vec<Option<ConvAlgo>>,
    branches: BranchSchedule,
    profile: Option<Vec<NodeTime>>,
    acts: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    argmax: Vec<Vec<u32>>,
    /// Per batch-norm node, the statistics its last forward pass normalized with.
    bn_stats: Vec<ChannelStats>,
    /// The mode of the last forward pass (backward and the running-statistics update follow it).
    mode: Mode,
    /// Dropout's seed for the current pass; each training forward moves it on.
    dropout_seed: u64,
    /// Softmax probabilities per loss head: the output's, then each auxiliary output's.
    probabilities: Vec<Vec<f32>>,
    /// Nodes the main output depends on; the others (auxiliary heads) are skipped in eval.
    main_path: Vec<bool>,
    labels: Vec<usize>,
    label_smoothing: f32,
    param_grads: Vec<Vec<f32>>,
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

/// What a node keeps from its forward pass for its backward pass, besides its output.
struct Saved<'a> {
    /// A max pool's argmaxes, or a dropout's kept flags (empty for other nodes).
    argmax: &'a mut [u32],
    /// A dropout's seed for this pass and node.
    seed: u64,
    /// The batch index of `x`'s first image (images run one at a time in concurrent branches).
    first_image: usize,
    /// A batch norm's statistics.
    stats: &'a mut ChannelStats,
}

/// Computes one single-input node (`node`, reading node `input`'s output `x`) into `y`.
#[allow(clippy::too_many_arguments)]
fn forward_node(
    graph: &Graph,
    node: &Node,
    input: NodeId,
    x: Images<'_>,
    y: &mut ImagesMut<'_>,
    saved: Saved<'_>,
    params: &[Vec<f32>],
    algo: Option<ConvAlgo>,
    mode: Mode,
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
            let algo = algo.expect("every convolution's algorithm is resolved when the executor is built");
            let b = bias.map(|b| params[b].as_slice());
            conv::forward_images_fused(&g, algo, x, &params[*weight], b, *relu, y);
        }
        Layer::Linear { linear, weight, bias } => {
            linear.forward_images(x, &params[*weight], bias.map(|b| params[b].as_slice()), y);
        }
        Layer::BatchNorm {
            bn,
            gamma,
            beta,
            running_mean,
            running_var,
            relu,
        } => {
            match mode {
                Mode::Train => bn.batch_statistics(x, h * w, saved.stats)?,
                Mode::Eval => bn.running_statistics(&params[*running_mean], &params[*running_var], saved.stats),
            }
            bn.normalize_images(x, h * w, saved.stats, &params[*gamma], &params[*beta], *relu, y);
        }
        Layer::ZeroPad(pads) => shape::zero_pad_images(x, [h, w], *pads, y),
        Layer::MaxPool(pool) => {
            let g = pool.window.geometry("max_pool2d", [batch, c, h, w])?;
            max_pool_forward(&g, x, y, saved.argmax);
        }
        Layer::Dropout(dropout) => match mode {
            Mode::Train => dropout.forward_images(x, y, saved.argmax, saved.seed, saved.first_image),
            Mode::Eval => dropout.identity_images(x, y, saved.argmax),
        },
        Layer::AvgPool(pool) => {
            let g = pool.window.geometry("avg_pool2d", [batch, c, h, w])?;
            pool.forward_images(&g, x, y);
        }
        Layer::GlobalAvgPool => pool::global_avg_pool_forward(x, h * w, y),
        Layer::AdaptiveAvgPool(output) => pool::adaptive_avg_pool_forward(x, [h, w], *output, y),
        Layer::Relu => activation::relu_images(x, y),
        Layer::Input | Layer::Concat | Layer::Flatten | Layer::AddScaled { .. } => {
            unreachable!("{} is not a single-input op", node.name)
        }
    }
    Ok(())
}

/// Dropout's seed for node `id` in the pass seeded `pass_seed`.
fn node_seed(pass_seed: u64, id: NodeId) -> u64 {
    pass_seed ^ (id as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// Whether each node is needed for the graph's main output.
fn main_path(graph: &Graph) -> Vec<bool> {
    let mut needed = vec![false; graph.nodes.len()];
    needed[graph.output] = true;
    for id in (0..graph.nodes.len()).rev() {
        if needed[id] {
            for &input in &graph.nodes[id].inputs {
                needed[input] = true;
            }
        }
    }
    needed
}

/// The algorithm every convolution of `graph` runs: the plan's choice, or `forced` everywhere (an error
/// naming the first node it cannot run).
fn resolve_algos(graph: &Graph, plan: &Plan, forced: ConvAlgo) -> Result<Vec<Option<ConvAlgo>>> {
    graph
        .nodes
        .iter()
        .zip(&plan.conv_algos)
        .map(|(node, &planned)| match (&node.layer, forced) {
            (Layer::Conv { conv, .. }, ConvAlgo::Auto) => Ok(planned.or(Some(conv.algo))),
            (Layer::Conv { conv, .. }, forced) => {
                let [c, h, w] = graph.nodes[node.inputs[0]].shape;
                let g = conv.geometry([1, c, h, w]).map_err(|e| e.in_node(&node.name))?;
                Ok(Some(conv::choose_algo(forced, &g).map_err(|e| e.in_node(&node.name))?))
            }
            _ => Ok(None),
        })
        .collect()
}

/// The most scratch any convolution (with the algorithm it runs) or pool of `graph` takes on one thread
/// at batch `capacity`, per slot.
fn scratch_demand(graph: &Graph, algos: &[Option<ConvAlgo>], capacity: usize) -> Result<ScratchDemand> {
    let mut demand = [0; 3];
    for (node, algo) in graph.nodes.iter().zip(algos) {
        let [c, h, w] = graph.nodes[node.inputs.first().copied().unwrap_or(0)].shape;
        match (&node.layer, algo) {
            (Layer::Conv { conv, .. }, Some(algo)) => {
                let g = conv.geometry([capacity, c, h, w])?;
                let [general, weights] = conv::scratch_demand(&g, *algo);
                demand[0] = demand[0].max(general);
                demand[1] = demand[1].max(weights);
            }
            (Layer::MaxPool(pool), _) => {
                let g = pool.window.geometry("max_pool2d", [capacity, c, h, w])?;
                demand[2] = demand[2].max(pool::max_pool_scratch(&g));
            }
            _ => {}
        }
    }
    Ok(demand)
}

fn images(bufs: &[Vec<f32>], p: Place, batch: usize) -> Images<'_> {
    Images::strided(&bufs[p.buffer], batch, p.len, p.stride, p.offset)
}

fn images_mut(buf: &mut [f32], p: Place, batch: usize) -> ImagesMut<'_> {
    ImagesMut::strided(buf, batch, p.len, p.stride, p.offset)
}

/// Runs `f` with `bufs[place.buffer]` taken out for writing and the rest readable. The plan guarantees
/// no node reads the buffer it writes.
fn with_buffer<R>(bufs: &mut [Vec<f32>], buffer: usize, f: impl FnOnce(&[Vec<f32>], &mut [f32]) -> R) -> R {
    let mut out = std::mem::take(&mut bufs[buffer]);
    let result = f(bufs, &mut out);
    bufs[buffer] = out;
    result
}

impl Executor {
    /// Plans `graph` and allocates activation buffers for batches of up to `capacity` images. Gradient
    /// buffers are allocated on the first backward pass, so inference-only executors never hold them.
    pub fn new(graph: &Graph, capacity: usize) -> Result<Executor> {
        if capacity == 0 {
            return Err(Error::config("executor", "the batch capacity must be at least 1"));
        }
        let plan = Plan::new(graph)?;
        let acts = plan
            .buffer_image_len
            .iter()
            .map(|&len| vec![0.0; len * capacity])
            .collect();
        let argmax = graph
            .nodes
            .iter()
            .map(|n| {
                if matches!(n.layer, Layer::MaxPool(_) | Layer::Dropout(_)) {
                    vec![0u32; n.image_len() * capacity]
                } else {
                    Vec::new()
                }
            })
            .collect();
        let algos = resolve_algos(graph, &plan, ConvAlgo::Auto)?;
        reserve_scratch(scratch_demand(graph, &algos, capacity)?);
        let classes = graph.output_len();
        Ok(Executor {
            plan,
            capacity,
            batch: 0,
            algos,
            branches: BranchSchedule::Auto,
            profile: None,
            acts,
            grads: Vec::new(),
            argmax,
            bn_stats: vec![ChannelStats::default(); graph.nodes.len()],
            mode: Mode::Eval,
            dropout_seed: 0,
            probabilities: vec![vec![0.0; classes * capacity]; 1 + graph.aux_outputs.len()],
            main_path: main_path(graph),
            labels: Vec::with_capacity(capacity),
            label_smoothing: 0.0,
            // Running statistics get no gradient: an empty one, which optimizers skip.
            param_grads: graph
                .params
                .iter()
                .map(|p| vec![0.0; if p.trainable { p.len() } else { 0 }])
                .collect(),
        })
    }

    /// Forces one convolution algorithm on every convolution of `graph` (`Auto` restores the plan's
    /// per-layer choice); an error naming the first layer it cannot run. Scratch is reserved for it, so
    /// steps still allocate nothing.
    pub fn set_conv_algo(&mut self, graph: &Graph, algo: ConvAlgo) -> Result<()> {
        let algos = resolve_algos(graph, &self.plan, algo)?;
        reserve_scratch(scratch_demand(graph, &algos, self.capacity)?);
        self.algos = algos;
        Ok(())
    }

    /// Chooses how the forward pass schedules Inception branches.
    pub fn set_branch_schedule(&mut self, schedule: BranchSchedule) {
        self.branches = schedule;
    }

    /// Starts (or, with `false`, stops) timing every node; starting clears earlier times.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| vec![NodeTime::default(); self.plan.places.len()]);
    }

    /// Time spent per node since profiling started, in node order (`None` when not profiling). A
    /// branch group run concurrently books its whole time on its concat node.
    pub fn profile(&self) -> Option<&[NodeTime]> {
        self.profile.as_deref()
    }

    /// The largest batch the buffers hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The plan the buffers follow.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Parameter gradients from the last backward pass, in [`Graph::params`] order.
    pub fn param_grads(&self) -> &[Vec<f32>] {
        &self.param_grads
    }

    /// The output of the last forward pass: `batch` rows of [`Graph::output_len`] values.
    pub fn output(&self, graph: &Graph) -> Images<'_> {
        self.node_output(graph.output)
    }

    /// The output of node `node` from the last forward pass.
    pub fn node_output(&self, node: usize) -> Images<'_> {
        images(&self.acts, self.plan.places[node], self.batch)
    }

    /// The gradient of the loss with respect to node `node`'s output, from the last backward pass
    /// (for a ReLU-fused convolution, the gradient before its ReLU once backward has passed it).
    pub fn node_grad(&self, node: usize) -> Option<Images<'_>> {
        (!self.grads.is_empty()).then(|| images(&self.grads, self.plan.places[node], self.batch))
    }

    /// Copies the output of the last forward pass into a dense vector (`batch * outputs`).
    pub fn output_vec(&self, graph: &Graph) -> Vec<f32> {
        let out = self.output(graph);
        (0..out.count()).flat_map(|n| out.get(n).iter().copied()).collect()
    }

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

    /// Runs the graph on `input` (`count` images of `c*h*w` values each).
    pub fn forward(&mut self, graph: &Graph, params: &[Vec<f32>], input: Images<'_>, mode: Mode) -> Result<()> {
        Self::check_params(graph, params)?;
        let expected = graph.nodes[0].image_len();
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
        let batch = input.count();
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
                    algos: &self.algos,
                    batch,
                    mode,
                    pass_seed: self.dropout_seed,
                };
                run.forward(group, &mut self.acts, &mut self.argmax, &mut self.bn_stats)?;
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
            self.forward_one(graph, params, id, input, mode)?;
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
    ) -> Result<()> {
        let node = &graph.nodes[id];
        let (batch, places) = (self.batch, &self.plan.places);
        let algo = self.algos[id];
        let p = places[id];
        let in_place = &self.plan.in_place[id];
        let argmax = &mut self.argmax[id];
        let stats = &mut self.bn_stats[id];
        let seed = node_seed(self.dropout_seed, id);
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
                        first_image: 0,
                        stats,
                    };
                    forward_node(graph, node, input, x, &mut y, saved, params, algo, mode)?;
                }
            }
            Ok(())
        };
        if matches!(node.layer, Layer::Flatten) {
            return Ok(());
        }
        with_buffer(&mut self.acts, p.buffer, run).map_err(|e| e.in_node(&node.name))
    }

    /// Moves every batch norm's running statistics in `params` toward the statistics of the last
    /// forward pass, as PyTorch does during a training-mode forward. Call it once after each
    /// [`Mode::Train`] forward (the training loop and `incept bench` do); after an eval forward it does
    /// nothing.
    pub fn update_running_statistics(&self, graph: &Graph, params: &mut [Vec<f32>]) -> Result<()> {
        Self::check_params(graph, params)?;
        if self.mode != Mode::Train {
            return Ok(());
        }
        for (node, stats) in graph.nodes.iter().zip(&self.bn_stats) {
            if let Layer::BatchNorm {
                bn,
                running_mean,
                running_var,
                ..
            } = &node.layer
            {
                let [mean, var] = params
                    .get_disjoint_mut([*running_mean, *running_var])
                    .expect("running mean and variance are distinct parameters");
                bn.update_running_statistics(stats, mean, var);
            }
        }
        Ok(())
    }

    /// One training step: a training forward on `images`, the loss against `labels` (with
    /// `label_smoothing`) and, if the loss is finite, the running-statistics update, the backward pass
    /// and `optimizer`'s update of `params` at learning rate `lr`. A non-finite loss leaves `params`
    /// untouched (running statistics included) and is returned for the caller to report.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &mut self,
        graph: &Graph,
        params: &mut [Vec<f32>],
        images: Images<'_>,
        labels: &[usize],
        label_smoothing: f32,
        optimizer: &mut Optimizer,
        lr: f32,
    ) -> Result<BatchLoss> {
        self.forward(graph, params, images, Mode::Train)?;
        let loss = self.loss(graph, labels, label_smoothing)?;
        if loss.loss.is_finite() {
            self.update_running_statistics(graph, params)?;
            self.backward(graph, params)?;
            optimizer.step(params, &self.param_grads, lr);
        }
        Ok(loss)
    }

    /// Softmax cross-entropy of the last forward's output against `labels`, batch-averaged, with label
    /// smoothing `eps`; keeps the probabilities for [`Executor::backward`]. After a training forward,
    /// each auxiliary head's loss is added with its weight (the accuracy counts the main output only).
    pub fn loss(&mut self, graph: &Graph, labels: &[usize], label_smoothing: f32) -> Result<BatchLoss> {
        let classes = graph.output_len();
        loss::check_labels("loss", labels, self.batch, classes)?;
        if !(0.0..1.0).contains(&label_smoothing) {
            return Err(Error::config(
                "loss",
                format!("label smoothing must be in [0, 1), found {label_smoothing}"),
            ));
        }
        let mut total = 0.0;
        for (head, (node, weight)) in self.loss_heads(graph).into_iter().enumerate() {
            let p = self.plan.places[node];
            let logits = &self.acts[p.buffer][p.offset..];
            let probabilities = &mut self.probabilities[head][..labels.len() * classes];
            total +=
                weight as f64 * loss::forward_rows(logits, p.stride, classes, labels, label_smoothing, probabilities);
        }
        let out = self.output(graph);
        let correct = (0..labels.len())
            .filter(|&n| {
                let row = out.get(n);
                let best = (0..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b });
                best == labels[n]
            })
            .count();
        self.labels.clear();
        self.labels.extend_from_slice(labels);
        self.label_smoothing = label_smoothing;
        Ok(BatchLoss { loss: total, correct })
    }

    /// The output and, after a training forward, the auxiliary heads, each with its loss weight.
    fn loss_heads(&self, graph: &Graph) -> Vec<(NodeId, f32)> {
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
