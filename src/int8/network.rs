//! A float32 graph compiled into integer steps, and run: convolutions (with a following batch norm
//! folded in) on u8 images, pooling and concatenation on bytes, and from global pooling on, the
//! classifier in float32. Each thread runs whole images through every step, so one image's activations
//! stay in its caches.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::{
    ConcatPart, QConv, QuantParams, Ranges, RequantizeIsa, add_scaled_u8, avg_pool_u8, concat_u8, max_pool_u8,
    zero_pad_u8,
};
use crate::blocked::{self, Halo};
use crate::error::{Error, Result};
use crate::graph::{Graph, Layer, NodeId};
use crate::microkernel::{Int8Isa, LANES};
use crate::ops::conv::ConvGeometry;
use crate::ops::pool::{AvgPool2d, PoolGeometry};
use crate::parallel::{self, Threads};

/// What one node of the graph computes in the int8 network.
#[derive(Debug, Clone)]
pub enum Step {
    /// The float32 images fed to the network.
    Input,
    /// A node that is not on the path to the output (an auxiliary head) or whose value is another
    /// node's: flatten, dropout, a batch norm folded into its convolution.
    Same(NodeId),
    /// A convolution on bytes into bytes.
    Conv(Box<QConv>),
    /// Max pooling on bytes.
    MaxPool(PoolGeometry),
    /// Average pooling on bytes.
    AvgPool(AvgPool2d, PoolGeometry),
    /// A ReLU on bytes: `max(q, zero_point)`.
    Relu,
    /// Concatenation of byte images.
    Concat,
    /// Global average pooling of bytes into float32 values.
    GlobalAvgPool,
    /// Bytes as the real values they stand for, in NCHW order (a flatten of bytes).
    Dequantize,
    /// Zero padding of bytes: the new border is the zero point.
    ZeroPad(crate::geometry::Pads),
    /// `a + scale · b` of two byte images (Inception-ResNet's scaled residual), then a ReLU with `relu`,
    /// in float32 on their real values, requantized into this node's parameters.
    AddScaled {
        /// Weight of the branch.
        scale: f32,
        /// Clamp at 0.
        relu: bool,
    },
    /// `y = x · Wᵀ + b` in float32.
    Linear {
        /// `[out, in]`.
        weight: Vec<f32>,
        /// `[out]`.
        bias: Option<Vec<f32>>,
    },
    /// Not computed: off the path to the output.
    Unused,
}

/// How a node's value is held: bytes (blocked, with their parameters) or float32 (NCHW).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Bytes(QuantParams),
    Float,
}

/// A graph compiled for int8 inference.
#[derive(Debug, Clone)]
pub struct QuantizedNetwork {
    graph: Graph,
    steps: Vec<Step>,
    kinds: Vec<Kind>,
    /// The parameters chosen from each calibrated range (the input's, convolutions' and concats'),
    /// by node: what a checkpoint stores.
    chosen: std::collections::BTreeMap<NodeId, QuantParams>,
    isa: Int8Isa,
    requantize: RequantizeIsa,
    /// Values of earlier calls, kept for the next: a fresh set costs page faults on every first touch,
    /// which at batch 1 took longer than the convolutions.
    spare: SpareValues,
}

/// [`Values`] kept between calls; a clone of the network starts with none.
#[derive(Default)]
struct SpareValues(std::sync::Mutex<Vec<Values>>);

impl Clone for SpareValues {
    fn clone(&self) -> SpareValues {
        SpareValues::default()
    }
}

impl std::fmt::Debug for SpareValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpareValues")
    }
}

impl QuantizedNetwork {
    /// Compiles `graph` with float32 `params` for u8 activations with the parameters `ranges` gives each
    /// node. An error names the first node whose layer int8 inference does not run yet.
    pub fn new(graph: &Graph, params: &[Vec<f32>], ranges: &Ranges) -> Result<QuantizedNetwork> {
        QuantizedNetwork::compile(graph, &FromFloat { graph, params, ranges })
    }

    /// Compiles `graph` with each convolution, linear layer and node parameter from `source`.
    pub(super) fn compile(graph: &Graph, source: &dyn Source) -> Result<QuantizedNetwork> {
        let nodes = &graph.nodes;
        let readers = |id: NodeId| nodes.iter().filter(|n| n.inputs.contains(&id)).count();
        let needed = graph.main_path();
        // A batch norm folds into the convolution before it when it is that convolution's only reader and
        // no ReLU sits between them.
        let folded_into: Vec<Option<NodeId>> = (0..nodes.len())
            .map(|id| match (&nodes[id].layer, nodes[id].inputs.first()) {
                (Layer::BatchNorm { .. }, Some(&src))
                    if matches!(nodes[src].layer, Layer::Conv { relu: false, .. }) && readers(src) == 1 =>
                {
                    Some(src)
                }
                _ => None,
            })
            .collect();
        let folds: Vec<Option<NodeId>> = (0..nodes.len())
            .map(|id| folded_into.iter().position(|&f| f == Some(id)))
            .collect();
        // Parameters: a convolution's output (after its folded batch norm) and a concatenation take their
        // own range; a convolution read only by a concatenation takes the concatenation's, so the concat
        // copies bytes; pooling, ReLU and shape nodes keep their input's.
        let chosen = std::cell::RefCell::new(std::collections::BTreeMap::new());
        let own = |id: NodeId| -> Result<QuantParams> {
            let params = source.params(id)?;
            chosen.borrow_mut().insert(id, params);
            Ok(params)
        };
        let mut kinds = vec![Kind::Float; nodes.len()];
        let mut steps = Vec::with_capacity(nodes.len());
        for (id, node) in nodes.iter().enumerate() {
            let input = node.inputs.first().copied();
            let input_kind = input.map(|i| kinds[i]);
            let unsupported =
                |what: &str| Error::config("int8", format!("node {} ({what}) does not run in int8 yet", node.name));
            if !needed[id] {
                steps.push(Step::Unused);
                continue;
            }
            let (step, kind) = match &node.layer {
                Layer::Input => (Step::Input, Kind::Float),
                Layer::Conv { conv, relu, .. } => {
                    let i = input.expect("a convolution has an input");
                    let x_params = match kinds[i] {
                        Kind::Bytes(p) => p,
                        Kind::Float => own(i)?,
                    };
                    let [c, h, w] = nodes[i].shape;
                    let g = conv.geometry([1, c, h, w]).map_err(|e| e.in_node(&node.name))?;
                    let (relu, out_node) = match folds[id] {
                        Some(bn) => match &nodes[bn].layer {
                            Layer::BatchNorm { relu, .. } => (*relu, bn),
                            _ => unreachable!("folds are batch norms"),
                        },
                        None => (*relu, id),
                    };
                    let y_params = concat_reader(graph, out_node, &readers).map_or_else(|| own(out_node), own)?;
                    let conv = source.conv(id, folds[id], &g, relu, (x_params, y_params))?;
                    (Step::Conv(Box::new(conv)), Kind::Bytes(y_params))
                }
                Layer::BatchNorm { .. } => match folded_into[id] {
                    Some(conv) => (Step::Same(conv), kinds[conv]),
                    None => return Err(unsupported("a batch norm not right after a convolution")),
                },
                Layer::MaxPool(pool) => {
                    let Some(Kind::Bytes(p)) = input_kind else {
                        return Err(unsupported("max pooling of float values"));
                    };
                    let g = pool_geometry(&pool.window, nodes[input.unwrap()].shape, &node.name)?;
                    (Step::MaxPool(g), Kind::Bytes(p))
                }
                Layer::AvgPool(pool) => {
                    let Some(Kind::Bytes(p)) = input_kind else {
                        return Err(unsupported("average pooling of float values"));
                    };
                    let g = pool_geometry(&pool.window, nodes[input.unwrap()].shape, &node.name)?;
                    (Step::AvgPool(*pool, g), Kind::Bytes(p))
                }
                Layer::Relu => {
                    let Some(Kind::Bytes(p)) = input_kind else {
                        return Err(unsupported("a ReLU of float values"));
                    };
                    (Step::Relu, Kind::Bytes(p))
                }
                Layer::Concat => {
                    if node.inputs.iter().any(|&i| kinds[i] == Kind::Float) {
                        return Err(unsupported("concatenation of float values"));
                    }
                    (Step::Concat, Kind::Bytes(own(id)?))
                }
                Layer::GlobalAvgPool | Layer::AdaptiveAvgPool([1, 1]) => {
                    if input_kind == Some(Kind::Float) {
                        return Err(unsupported("global pooling of float values"));
                    }
                    (Step::GlobalAvgPool, Kind::Float)
                }
                Layer::Flatten | Layer::Dropout(_) => {
                    let i = input.expect("one input");
                    match kinds[i] {
                        Kind::Float => (Step::Same(i), Kind::Float),
                        Kind::Bytes(_) if matches!(node.layer, Layer::Flatten) => (Step::Dequantize, Kind::Float),
                        Kind::Bytes(p) => (Step::Same(i), Kind::Bytes(p)),
                    }
                }
                Layer::Linear { .. } => {
                    if input_kind != Some(Kind::Float) {
                        return Err(unsupported("a linear layer on bytes"));
                    }
                    let (weight, bias) = source.linear(id)?;
                    (Step::Linear { weight, bias }, Kind::Float)
                }
                Layer::ZeroPad(pads) => {
                    let Some(Kind::Bytes(p)) = input_kind else {
                        return Err(unsupported("zero padding of float values"));
                    };
                    (Step::ZeroPad(*pads), Kind::Bytes(p))
                }
                Layer::AdaptiveAvgPool(_) => return Err(unsupported("adaptive average pooling")),
                Layer::AddScaled { scale, relu } => {
                    if node.inputs.iter().any(|&i| kinds[i] == Kind::Float) {
                        return Err(unsupported("a scaled residual sum of float values"));
                    }
                    (
                        Step::AddScaled {
                            scale: *scale,
                            relu: *relu,
                        },
                        Kind::Bytes(own(id)?),
                    )
                }
            };
            kinds[id] = kind;
            steps.push(step);
        }
        if kinds[graph.output] != Kind::Float {
            return Err(Error::config(
                "int8",
                "the network's output must be float values (a classifier)",
            ));
        }
        Ok(QuantizedNetwork {
            graph: graph.clone(),
            steps,
            kinds,
            chosen: chosen.into_inner(),
            isa: Int8Isa::best(),
            requantize: RequantizeIsa::best(),
            spare: SpareValues::default(),
        })
    }

    /// The graph this network was compiled from.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Each node's step.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The int8 microkernel build the convolutions run.
    pub fn isa(&self) -> Int8Isa {
        self.isa
    }

    /// Runs the convolutions on `isa`'s build (tests compare the builds); panics if it is not available.
    pub fn set_isa(&mut self, isa: Int8Isa, requantize: RequantizeIsa) {
        assert!(
            isa.available() && requantize.available(),
            "{isa:?}/{requantize:?} not available"
        );
        (self.isa, self.requantize) = (isa, requantize);
    }

    /// The parameters chosen from calibrated ranges, by node (the input's, every convolution's output
    /// and every concatenation's; the others keep their input's).
    pub fn chosen_params(&self) -> &std::collections::BTreeMap<NodeId, QuantParams> {
        &self.chosen
    }

    /// The parameters of node `id`'s bytes, `None` for a float32 node.
    pub fn node_params(&self, id: NodeId) -> Option<QuantParams> {
        match self.kinds[id] {
            Kind::Bytes(p) => Some(p),
            Kind::Float => None,
        }
    }

    /// The logits of `images` (NCHW float32, the network's input as given, one image after another):
    /// `[n, outputs]` as one vector. Images run in parallel across the pool when they fill it, else one
    /// at a time with each convolution's work across the pool.
    pub fn forward(&self, images: &[f32]) -> Result<Vec<f32>> {
        self.forward_timed(images, false).map(|(logits, _)| logits)
    }

    /// [`QuantizedNetwork::forward`], and with `timed` each node's time summed over the images and the
    /// threads that ran them (thread time: with images across two threads, about twice the wall time).
    pub fn forward_timed(&self, images: &[f32], timed: bool) -> Result<(Vec<f32>, Vec<Duration>)> {
        let [c, h, w] = self.graph.input_shape();
        let per_image = c * h * w;
        if per_image == 0 || images.len() % per_image != 0 {
            return Err(Error::shape(
                "int8 network input",
                format!("whole images of [{c}, {h}, {w}] = {per_image} values"),
                format!("{} values", images.len()),
            ));
        }
        let n = images.len() / per_image;
        let outputs = self.graph.output_len();
        let parts = parallel::parts(n);
        // Refused before anything is allocated: each part's values of every node for one image, and the
        // logits.
        let need = (parts as u64)
            .saturating_mul(self.values_bytes())
            .saturating_add((4 * n as u64).saturating_mul(outputs as u64));
        // Reading what is available costs a few files under /proc and /sys (more than a batch-1 pass
        // takes); below 64 MiB, which every machine we run on has, it is not read.
        let available = if need > 64 << 20 {
            crate::memory::available()
        } else {
            None
        };
        if let Some(available) = available.filter(|a| need > a.bytes) {
            return Err(Error::Memory {
                reason: format!(
                    "int8 inference of {n} images of [{c}, {h}, {w}] needs {}; {} are available ({})",
                    crate::memory::gib(need),
                    crate::memory::gib(available.bytes),
                    available.source
                ),
            });
        }
        let mut logits = crate::memory::zeroed(n * outputs, "the int8 network's logits")?;
        let per_part = n.div_ceil(parts.max(1)).max(1);
        let nodes = self.graph.nodes.len();
        let run = |first: usize, out: &mut [f32], threads: Threads| {
            let spare = self.spare.0.lock().map(|mut s| s.pop()).unwrap_or(None);
            let mut values = spare.unwrap_or_else(|| Values::new(self));
            let mut times = timed.then(|| vec![Duration::ZERO; nodes]);
            for (i, out) in out.chunks_exact_mut(outputs).enumerate() {
                let image = &images[(first + i) * per_image..][..per_image];
                self.forward_image(image, &mut values, threads, times.as_deref_mut());
                out.copy_from_slice(values.float(self.graph.output));
            }
            if let Ok(mut spare) = self.spare.0.lock() {
                spare.push(values);
            }
            times.unwrap_or_default()
        };
        let part_times: Vec<Vec<Duration>> = if parts <= 1 {
            // On a worker of the pool, so each convolution's parallel loop starts from inside it (its
            // half for this thread at once, the other stolen) rather than handing every loop from the
            // calling thread to the pool and sleeping until it ends: 57 hand-offs per googlenet-d2l image.
            let logits = &mut logits;
            vec![rayon::scope(move |_| run(0, logits, Threads::Pool))]
        } else {
            logits
                .par_chunks_mut(per_part * outputs)
                .enumerate()
                .map(|(p, out)| run(p * per_part, out, Threads::One))
                .collect()
        };
        let mut times = vec![Duration::ZERO; if timed { nodes } else { 0 }];
        for part in part_times {
            times.iter_mut().zip(part).for_each(|(t, p)| *t += p);
        }
        Ok((logits, times))
    }

    /// Bytes one thread's [`Values`] take: every node's value for one image and a convolution's input.
    fn values_bytes(&self) -> u64 {
        let nodes = &self.graph.nodes;
        let mut bytes = 0u64;
        for (id, step) in self.steps.iter().enumerate() {
            let [c, h, w] = nodes[id].shape;
            bytes += match (step, self.kinds[id]) {
                (Step::Same(_) | Step::Unused, _) => 0,
                (_, Kind::Bytes(_)) => blocked::image_len(c, [h, w], Halo::default()) as u64,
                (_, Kind::Float) => 4 * nodes[id].image_len() as u64,
            };
        }
        let scratch = self.steps.iter().filter_map(|s| match s {
            Step::Conv(conv) => Some(conv.input_len() as u64),
            _ => None,
        });
        bytes + scratch.max().unwrap_or(0)
    }

    /// One image through every step into `values`.
    fn forward_image(&self, image: &[f32], values: &mut Values, threads: Threads, mut times: Option<&mut [Duration]>) {
        let builds = (self.isa, self.requantize);
        for (id, step) in self.steps.iter().enumerate() {
            let start = times.is_some().then(Instant::now);
            let node = &self.graph.nodes[id];
            let input = node.inputs.first().copied();
            match step {
                Step::Input => values.floats[id].copy_from_slice(image),
                Step::Same(_) | Step::Unused => {}
                Step::Conv(conv) => {
                    let i = input.expect("a convolution has an input");
                    let bytes_in = matches!(self.kinds[values.source(i)], Kind::Bytes(_));
                    if bytes_in && conv.reads_blocked_in_place() {
                        // A 1×1 unpadded convolution reads its input's bytes as they lie.
                        let (x, y) = values.input_and_output(i, id);
                        conv.forward_image_on(x, y, builds, threads);
                    } else {
                        let mut scratch = std::mem::take(&mut values.scratch);
                        let x = &mut scratch[..conv.input_len()];
                        match bytes_in {
                            false => conv.input_from_nchw(values.float(i), x),
                            true => conv.input_from_blocked(values.bytes(i), x),
                        }
                        conv.forward_image_on(x, &mut values.bytes[id], builds, threads);
                        values.scratch = scratch;
                    }
                }
                Step::MaxPool(g) => {
                    let (x, y) = values.input_and_output(input.unwrap(), id);
                    max_pool_u8(g, x, y);
                }
                Step::AvgPool(pool, g) => {
                    let params = self.node_params(id).expect("bytes");
                    let (x, y) = values.input_and_output(input.unwrap(), id);
                    avg_pool_u8(pool, g, params, x, y);
                }
                Step::Relu => {
                    let zero_point = self.node_params(id).expect("bytes").zero_point;
                    let (x, y) = values.input_and_output(input.unwrap(), id);
                    y.iter_mut().zip(x).for_each(|(y, &x)| *y = x.max(zero_point));
                }
                Step::Concat => {
                    let params = self.node_params(id).expect("bytes");
                    let [_, h, w] = node.shape;
                    let mut out = std::mem::take(&mut values.bytes[id]);
                    let parts: Vec<ConcatPart<'_>> = node
                        .inputs
                        .iter()
                        .map(|&i| ConcatPart {
                            image: values.bytes(i),
                            channels: self.graph.nodes[i].shape[0],
                            params: self.node_params(i).expect("bytes"),
                        })
                        .collect();
                    concat_u8(&parts, [h, w], params, &mut out);
                    values.bytes[id] = out;
                }
                Step::GlobalAvgPool => {
                    let i = input.unwrap();
                    let params = self.node_params(i).expect("bytes");
                    let [c, h, w] = self.graph.nodes[i].shape;
                    let mut out = std::mem::take(&mut values.floats[id]);
                    global_pool_u8(values.bytes(i), c, h * w, params, &mut out);
                    values.floats[id] = out;
                }
                Step::Dequantize => {
                    let i = input.unwrap();
                    let params = self.node_params(i).expect("bytes");
                    let [_, h, w] = self.graph.nodes[i].shape;
                    let mut out = std::mem::take(&mut values.floats[id]);
                    let x = values.bytes(i);
                    for (ch, plane) in out.chunks_exact_mut(h * w).enumerate() {
                        let (b, lane) = (ch / LANES, ch % LANES);
                        for (p, v) in plane.iter_mut().enumerate() {
                            *v = params.dequantize(x[(b * h * w + p) * LANES + lane]);
                        }
                    }
                    values.floats[id] = out;
                }
                Step::ZeroPad(pads) => {
                    let zero_point = self.node_params(id).expect("bytes").zero_point;
                    let [c, h, w] = self.graph.nodes[input.unwrap()].shape;
                    let (x, y) = values.input_and_output(input.unwrap(), id);
                    zero_pad_u8(x, c, [h, w], *pads, zero_point, y);
                }
                Step::AddScaled { scale, relu } => {
                    let params = self.node_params(id).expect("bytes");
                    let [a, b] = [node.inputs[0], node.inputs[1]].map(|i| self.node_params(i).expect("bytes"));
                    let mut out = std::mem::take(&mut values.bytes[id]);
                    let (xa, xb) = (values.bytes(node.inputs[0]), values.bytes(node.inputs[1]));
                    add_scaled_u8((xa, a), (xb, b), *scale, *relu, params, &mut out);
                    values.bytes[id] = out;
                }
                Step::Linear { weight, bias } => {
                    let mut out = std::mem::take(&mut values.floats[id]);
                    let x = values.float(input.unwrap());
                    for (o, y) in out.iter_mut().enumerate() {
                        let row = &weight[o * x.len()..][..x.len()];
                        let dot: f32 = row.iter().zip(x).map(|(w, x)| w * x).sum();
                        *y = dot + bias.as_ref().map_or(0.0, |b| b[o]);
                    }
                    values.floats[id] = out;
                }
            }
            if let (Some(times), Some(start)) = (times.as_deref_mut(), start) {
                times[id] += start.elapsed();
            }
        }
    }
}

/// Where [`QuantizedNetwork::compile`] takes each part of the network from: float32 weights and
/// calibrated ranges ([`FromFloat`]), or an int8 checkpoint (`file.rs`).
pub(super) trait Source {
    /// The parameters of node `id`'s bytes.
    fn params(&self, id: NodeId) -> Result<QuantParams>;
    /// Convolution node `id` (with batch norm node `fold` folded in) on geometry `g`, then a ReLU with
    /// `relu`, from input bytes in `x` to output bytes in `y`.
    fn conv(
        &self,
        id: NodeId,
        fold: Option<NodeId>,
        g: &ConvGeometry,
        relu: bool,
        xy: (QuantParams, QuantParams),
    ) -> Result<QConv>;
    /// Linear node `id`'s float32 weight and bias.
    fn linear(&self, id: NodeId) -> Result<(Vec<f32>, Option<Vec<f32>>)>;
}

/// A float32 network's weights and the ranges calibration measured.
struct FromFloat<'a> {
    graph: &'a Graph,
    params: &'a [Vec<f32>],
    ranges: &'a Ranges,
}

impl Source for FromFloat<'_> {
    fn params(&self, id: NodeId) -> Result<QuantParams> {
        let (min, max) = self.ranges.get(id).ok_or_else(|| {
            Error::config(
                "int8",
                format!("no calibration range for node {}", self.graph.nodes[id].name),
            )
        })?;
        Ok(QuantParams::from_range(min, max))
    }

    fn conv(
        &self,
        id: NodeId,
        fold: Option<NodeId>,
        g: &ConvGeometry,
        relu: bool,
        (x, y): (QuantParams, QuantParams),
    ) -> Result<QConv> {
        let Layer::Conv { weight, bias, .. } = &self.graph.nodes[id].layer else {
            unreachable!("node {id} is a convolution")
        };
        let p = self.params;
        let (mut w, mut b) = (p[*weight].clone(), bias.map(|b| p[b].clone()));
        // Eval-mode batch norm is `k · (v - mean) + beta` per channel, `k = gamma / sqrt(var + eps)`:
        // the weights scale by `k`, the bias becomes `k · (b - mean) + beta`.
        if let Some(bn) = fold {
            let Layer::BatchNorm {
                bn: spec,
                gamma,
                beta,
                running_mean,
                running_var,
                ..
            } = &self.graph.nodes[bn].layer
            else {
                unreachable!("folds are batch norms")
            };
            let per_output = w.len() / g.out_channels;
            let mut folded = b.unwrap_or_else(|| vec![0.0; g.out_channels]);
            for o in 0..g.out_channels {
                let k = p[*gamma][o] / (p[*running_var][o] + spec.eps).sqrt();
                w[o * per_output..][..per_output].iter_mut().for_each(|v| *v *= k);
                folded[o] = (folded[o] - p[*running_mean][o]) * k + p[*beta][o];
            }
            b = Some(folded);
        }
        Ok(QConv::new(g, &w, b.as_deref(), relu, x, y))
    }

    fn linear(&self, id: NodeId) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let Layer::Linear { weight, bias, .. } = &self.graph.nodes[id].layer else {
            unreachable!("node {id} is a linear layer")
        };
        Ok((self.params[*weight].clone(), bias.map(|b| self.params[b].clone())))
    }
}

/// The concatenation that is the only reader of a convolution's output node `out_node`, if any (the
/// convolution then takes its parameters).
fn concat_reader(graph: &Graph, out_node: NodeId, readers: &dyn Fn(NodeId) -> usize) -> Option<NodeId> {
    if readers(out_node) != 1 {
        return None;
    }
    graph
        .nodes
        .iter()
        .position(|n| n.inputs.contains(&out_node) && matches!(n.layer, Layer::Concat))
}

fn pool_geometry(window: &crate::ops::pool::PoolWindow, [c, h, w]: [usize; 3], node: &str) -> Result<PoolGeometry> {
    window.geometry("pool", [1, c, h, w]).map_err(|e| e.in_node(node))
}

/// The mean of each channel of a blocked u8 image, in real values.
fn global_pool_u8(x: &[u8], channels: usize, pixels: usize, params: QuantParams, out: &mut [f32]) {
    for (b, plane) in x.chunks_exact(pixels * LANES).enumerate() {
        let mut sums = [0u32; LANES];
        for pixel in plane.chunks_exact(LANES) {
            sums.iter_mut().zip(pixel).for_each(|(s, &q)| *s += u32::from(q));
        }
        for (lane, &s) in sums.iter().enumerate() {
            let c = b * LANES + lane;
            if c < channels {
                let mean = s as f32 / pixels as f32 - f32::from(params.zero_point);
                out[c] = params.scale * mean;
            }
        }
    }
}

/// One thread's values of every node for one image: bytes for byte nodes, floats for float nodes, and
/// a convolution's input with its halo.
struct Values {
    bytes: Vec<Vec<u8>>,
    floats: Vec<Vec<f32>>,
    scratch: Vec<u8>,
    /// The node whose buffer holds each node's value ([`Step::Same`] chains resolved).
    sources: Vec<NodeId>,
}

impl Values {
    fn new(net: &QuantizedNetwork) -> Values {
        let nodes = &net.graph.nodes;
        let mut sources: Vec<NodeId> = (0..nodes.len()).collect();
        for (id, step) in net.steps.iter().enumerate() {
            if let Step::Same(of) = step {
                sources[id] = sources[*of];
            }
        }
        let owns = |id: usize| sources[id] == id && !matches!(net.steps[id], Step::Unused);
        let bytes = (0..nodes.len())
            .map(|id| match net.kinds[id] {
                Kind::Bytes(_) if owns(id) => {
                    let [c, h, w] = nodes[id].shape;
                    vec![0; blocked::image_len(c, [h, w], Halo::default())]
                }
                _ => Vec::new(),
            })
            .collect();
        let floats = (0..nodes.len())
            .map(|id| match net.kinds[id] {
                Kind::Float if owns(id) => vec![0.0; nodes[id].image_len()],
                _ => Vec::new(),
            })
            .collect();
        let scratch_len = net
            .steps
            .iter()
            .map(|s| match s {
                Step::Conv(conv) => conv.input_len(),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        Values {
            bytes,
            floats,
            scratch: vec![0; scratch_len],
            sources,
        }
    }

    fn source(&self, id: NodeId) -> NodeId {
        self.sources[id]
    }

    fn bytes(&self, id: NodeId) -> &[u8] {
        &self.bytes[self.sources[id]]
    }

    fn float(&self, id: NodeId) -> &[f32] {
        &self.floats[self.sources[id]]
    }

    /// Node `input`'s bytes to read and node `output`'s to write (distinct nodes).
    fn input_and_output(&mut self, input: NodeId, output: NodeId) -> (&[u8], &mut [u8]) {
        let input = self.sources[input];
        assert_ne!(input, output, "a node reads another's value");
        if input < output {
            let (low, high) = self.bytes.split_at_mut(output);
            (&low[input], &mut high[0])
        } else {
            let (low, high) = self.bytes.split_at_mut(input);
            (&high[0], &mut low[output])
        }
    }
}
