//! Where every activation lives. Each node's output gets a [`Place`] in one of the planned buffers; the
//! gradient of that output lives at the same place in a parallel set of gradient buffers.
//!
//! Two placements avoid copies: a branch feeding a channel concat writes straight into its channel slice
//! of the concat's buffer (so concat costs nothing forward or backward), and a flatten shares its input's
//! memory (unless it reorders a blocked input into NCHW rows). A part that cannot be placed (the graph input, a nested concat, a node that reads another part
//! of the same concat) is copied by the concat instead.

use super::builder::{Graph, Layer, NodeId};
pub use crate::blocked::Layout;
use crate::error::{Error, Result};
use crate::microkernel::{Bf16Isa, Isa, LANES};
use crate::ops::conv::{self, ConvAlgo, ConvGeometry, direct, winograd_blocked};

/// Where a node's output lives: image `n` is `buffer[n * stride + offset..][..len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Which buffer.
    pub buffer: usize,
    /// Offset of this output within each image's stretch of the buffer.
    pub offset: usize,
    /// Values per image.
    pub len: usize,
    /// Values per image of the whole buffer.
    pub stride: usize,
}

/// The buffers and places of a graph.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Per node: where its output lives.
    pub places: Vec<Place>,
    /// Per node: the layout of its output. Only convolutions that run [`ConvAlgo::Direct`] and the ops
    /// between them (max and average pool, batch norm, ReLU, zero padding, residual adds, concat of
    /// whole blocks) are blocked; a node is blocked only when
    /// every node that reads it can read the blocked layout, so no reorder sits between two ops.
    pub layouts: Vec<Layout>,
    /// Per node: values per image of its output, in its layout.
    pub lens: Vec<usize>,
    /// Per buffer: values per image.
    pub buffer_image_len: Vec<usize>,
    /// Per concat node and input: true if the input already lives in its slice (no copy needed).
    pub in_place: Vec<Vec<bool>>,
    /// Branch groups that may run concurrently, in node order.
    pub branch_groups: Vec<BranchGroup>,
    /// Per node: the algorithm of a convolution (chosen once, here), `None` for other nodes.
    pub conv_algos: Vec<Option<ConvAlgo>>,
    /// Per node: the Winograd output tile (2 or 4) a blocked 3×3 convolution's inference forward runs
    /// with instead of the direct microkernel, for the batch capacity [`Plan::choose_winograd`] was
    /// given (`None`: direct).
    pub winograd_tiles: Vec<Option<usize>>,
    /// Per node: the Winograd output tile a training pass runs the convolution's forward, input
    /// gradient and weight gradient with (`None`: direct): F(2,3) where inference's rule picks it. Not
    /// F(4,3), though its gradients are within 4.8e-6 of float64 (`tests/winograd_blocked.rs`) and it
    /// made googlenet-d2l's step 7-9% faster (three alternating runs of `incept bench --mode train
    /// --profile`: 941 / 936 / 998 against 1036 / 1015 / 1026 ms): its loss curve
    /// (`tests/winograd_training.rs`) is 3.9e-7 from the direct path's at step 2 (5.0e-7 with F(4,3) on
    /// the 8×8 maps only), where PyTorch's float64, float32 and ulp-perturbed float32 runs stay within
    /// 2.4e-7 of each other and F(2,3) within 1.3e-8 of the direct path; and with F(4,3) on every layer
    /// that run was still on the initial plateau after 200 steps (mean loss 2.32 on the last 50, the
    /// direct path's 1.99, F(2,3)'s 2.17). And not on a convolution that feeds a batch norm: in training,
    /// the batch norm divides by the batch's spread, so rounding relative to the outputs' size
    /// (F(2,3)'s is 3-5× the direct path's) is amplified where the spread is small. On inception-v4's unconditioned fixture batch
    /// (`tests/inception_family.rs`), training every such layer with F(2,3) moved the gradient norms
    /// from 1.08× float64's on average (PyTorch float32: 1.11×) to 1.24×, and one past 2×, while the
    /// backward pass's own Winograd changed none of them.
    pub winograd_training_tiles: Vec<Option<usize>>,
    /// What the caller forced; among it the instruction set every microkernel call of this plan runs.
    pub options: PlanOptions,
}

/// What a caller may force on a plan; the plan decides everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// One algorithm for every convolution; `Auto` keeps each layer's request and the plan's choice.
    pub conv_algo: ConvAlgo,
    /// The microkernel's instruction set. Tests force each one the CPU has; the default is
    /// [`Isa::best`] when the plan is made.
    pub isa: Isa,
    /// Which Winograd transforms inference may run ([`WinogradPolicy`]).
    pub winograd: WinogradPolicy,
    /// The arithmetic of the convolutions ([`Precision`]).
    pub precision: Precision,
    /// The bf16 microkernel's build, for [`Precision::Bf16`]; the default is [`Bf16Isa::best`].
    pub bf16_isa: Bf16Isa,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            conv_algo: ConvAlgo::Auto,
            isa: Isa::best(),
            winograd: WinogradPolicy::Accurate,
            precision: Precision::F32,
            bf16_isa: Bf16Isa::best(),
        }
    }
}

impl PlanOptions {
    /// The bf16 build a direct convolution of this plan runs, `None` in float32.
    pub fn bf16_kernel(&self) -> Option<Bf16Isa> {
        (self.precision == Precision::Bf16).then_some(self.bf16_isa)
    }
}

/// The arithmetic of a plan's convolutions.
///
/// In [`Precision::Bf16`] ("mixed precision", as PyTorch's `torch.autocast("cpu", torch.bfloat16)` and
/// the bf16 training literature do it), every convolution that runs [`ConvAlgo::Direct`] on the blocked
/// layout reads its inputs, its weights and (in training) its output gradients rounded to bf16 (nearest
/// even), and sums their products in float32 on the bf16 microkernel ([`crate::microkernel::bf16`]):
/// the forward pass, the input gradient, and the weight gradient where the horizontal stride is 1 (a
/// strided one sums the same rounded products on the float32 kernel). Everything else stays float32: the
/// master weights, the optimizer's state, the gradients, batch norm and its statistics, pooling, the
/// loss; and Winograd (its transforms amplify rounding), the few-channel first convolution, the
/// convolutions that run a GEMM-based algorithm on NCHW, and the linear classifier: together under 1%
/// of the multiply-adds of the eight models, where bf16 would buy nothing but a conversion pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// float32 everywhere: the default, and what every result of incept before bf16 was computed in.
    #[default]
    F32,
    /// bf16 products with float32 sums in the direct convolutions; float32 elsewhere.
    Bf16,
}

impl Precision {
    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Which Winograd transforms the plan may pick ([`winograd_blocked::choose_tile`]'s rule, with or
/// without F(4,3)); training follows `Accurate` under `Fast` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WinogradPolicy {
    /// The direct microkernel everywhere.
    Off,
    /// F(4×4, 3×3) and F(2×2, 3×3) where faster, except F(4,3) on a convolution that feeds a batch
    /// norm: a layer's error is at most 4.3e-6 of its largest output with F(4,3) and 5.1e-7 with
    /// F(2,3) (googlenet-d2l's layers), but a batch norm divides by the channel's spread, and through
    /// the BN-heavy inception-v3 and -v4 F(4,3) there gave 7.9e-3 on v3's logits (our bar, from
    /// PyTorch float32's distance from float64: 4.9e-3) where F(2,3) keeps every model within the
    /// tests' bars.
    #[default]
    Accurate,
    /// F(4×4, 3×3) wherever faster, batch norm or not.
    Fast,
}

/// The branches of an Inception block, which the forward pass may run at the same time: chains of
/// single-input nodes that start at one common `source`, each ending in a part that lives in its own
/// channel slice of `concat`. Together the chains are exactly the nodes `first..concat`, so running the
/// group replaces running those nodes in order; a chain's inner nodes each own their buffer and feed
/// only the next node of the chain, so no two chains touch the same memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchGroup {
    /// The node every chain reads.
    pub source: NodeId,
    /// The lowest node id of the chains.
    pub first: NodeId,
    /// The concat the chains feed, in its input order.
    pub concat: NodeId,
    /// Each chain's nodes in execution order; the last one is the concat's part.
    pub chains: Vec<Vec<NodeId>>,
}

impl Plan {
    /// Whether node `id` is a flatten that reorders a blocked input into NCHW rows (in a buffer of its
    /// own) rather than sharing its input's memory.
    pub fn flatten_reorders(&self, graph: &Graph, id: NodeId) -> bool {
        matches!(graph.nodes[id].layer, Layer::Flatten) && self.places[id] != self.places[graph.nodes[id].inputs[0]]
    }

    /// Plans `graph`; fails if a convolution forces an algorithm that cannot run its geometry.
    pub fn new(graph: &Graph) -> Result<Plan> {
        Plan::with_options(graph, PlanOptions::default())
    }

    /// Plans `graph` with `options.conv_algo` on every convolution (`Auto`: each layer's own request,
    /// and the plan's choice where that is `Auto`); fails naming the first layer it cannot run, or if
    /// this CPU lacks `options.isa`.
    pub fn with_options(graph: &Graph, options: PlanOptions) -> Result<Plan> {
        if !options.isa.available() {
            return Err(Error::config(
                "instruction set",
                format!("this CPU cannot run {:?} (it has {:?})", options.isa, Isa::best()),
            ));
        }
        let nodes = &graph.nodes;
        let (conv_algos, layouts) = conv_algos_and_layouts(graph, options)?;
        let lens: Vec<usize> = nodes
            .iter()
            .zip(&layouts)
            .map(|(n, layout)| layout.image_len(n.shape))
            .collect();
        // Pass 1: which nodes write straight into a concat, at which offset.
        let mut host: Vec<Option<(NodeId, usize)>> = vec![None; nodes.len()];
        let mut in_place = vec![Vec::new(); nodes.len()];
        for (id, node) in nodes.iter().enumerate() {
            if !matches!(node.layer, Layer::Concat) {
                continue;
            }
            let mut offset = 0;
            for &part in &node.inputs {
                let p = &nodes[part];
                let computes = !matches!(p.layer, Layer::Input | Layer::Concat | Layer::Flatten);
                let reads_sibling = p.inputs.iter().any(|&i| host[i].map(|h| h.0) == Some(id));
                let placeable = computes && host[part].is_none() && !reads_sibling;
                if placeable {
                    host[part] = Some((id, offset));
                }
                in_place[id].push(placeable);
                offset += lens[part];
            }
        }
        // Pass 2: a buffer for every node that owns its output.
        let mut places = vec![
            Place {
                buffer: 0,
                offset: 0,
                len: 0,
                stride: 0
            };
            nodes.len()
        ];
        // A flatten shares its input's memory unless it reorders a blocked input into NCHW rows.
        let shares = |id: NodeId| {
            let Layer::Flatten = nodes[id].layer else {
                return false;
            };
            let input = nodes[id].inputs[0];
            let [c, h, w] = nodes[input].shape;
            layouts[input] == Layout::Nchw || (h * w == 1 && c % LANES == 0)
        };
        let mut buffer_image_len = Vec::new();
        for (id, _) in nodes.iter().enumerate() {
            if host[id].is_none() && !shares(id) {
                let len = lens[id];
                places[id] = Place {
                    buffer: buffer_image_len.len(),
                    offset: 0,
                    len,
                    stride: len,
                };
                buffer_image_len.push(len);
            }
        }
        // Pass 3: hosted nodes and flattens, in order, so a concat's own place is known before its parts
        // are resolved (parts come earlier, so resolve them after all owners).
        for id in 0..nodes.len() {
            if let Some((concat, offset)) = host[id] {
                let c = places[concat];
                places[id] = Place {
                    buffer: c.buffer,
                    offset: c.offset + offset,
                    len: lens[id],
                    stride: c.stride,
                };
            }
        }
        for (id, node) in nodes.iter().enumerate() {
            if shares(id) {
                places[id] = places[node.inputs[0]];
            }
        }
        let mut consumers = vec![0usize; nodes.len()];
        for &i in nodes.iter().flat_map(|n| &n.inputs) {
            consumers[i] += 1;
        }
        let branch_groups = (0..nodes.len())
            .filter_map(|id| branch_group(graph, id, &in_place, &consumers))
            .collect();
        Ok(Plan {
            places,
            layouts,
            lens,
            buffer_image_len,
            in_place,
            branch_groups,
            winograd_tiles: vec![None; conv_algos.len()],
            winograd_training_tiles: vec![None; conv_algos.len()],
            conv_algos,
            options,
        })
    }

    /// Plans `graph` with `options` ([`Plan::with_options`]) for an executor of batches of up to
    /// `capacity` images, where inference may run Winograd ([`Plan::choose_winograd`]).
    pub fn for_capacity(graph: &Graph, options: PlanOptions, capacity: usize) -> Result<Plan> {
        let mut plan = Plan::with_options(graph, options)?;
        plan.choose_winograd(graph, capacity)?;
        Ok(plan)
    }

    /// Chooses where inference and training run Winograd ([`Plan::winograd_tiles`],
    /// [`Plan::winograd_training_tiles`]) for batches of up to `capacity` images, by
    /// [`winograd_blocked::choose_tile`]'s rule within `options.winograd`: on direct convolutions that
    /// read and write the blocked layout, unless one algorithm is forced on every layer. Training takes
    /// the rule's F(2,3) layers: `cargo bench --bench conv -- 3x3/1` (`PARTS=1`) measured its weight
    /// and input gradients faster than the direct path's on the same layers (batch 128, ms, F(2,3) /
    /// direct: 128->192 @12 weight 47 / 44, input 38 / 37; 160->320 @6 13 / 22, 11 / 16; 192->384 @3
    /// 9.5 / 11.9, 9.0 / 12.9) and level on 64 input channels (64->192 @24: 84 / 84, 74 / 68).
    pub fn choose_winograd(&mut self, graph: &Graph, capacity: usize) -> Result<()> {
        for (id, node) in graph.nodes.iter().enumerate() {
            let Layer::Conv { conv, .. } = &node.layer else {
                continue;
            };
            let input = node.inputs[0];
            let blocked = self.layouts[input] == Layout::Blocked && self.layouts[id] == Layout::Blocked;
            // A layer that asks for Direct runs on the blocked layout either way; forcing Direct on
            // every layer (`--conv-algo direct`) means the direct microkernel itself.
            let chosen =
                self.options.conv_algo == ConvAlgo::Auto && self.conv_algos[id] == Some(ConvAlgo::Direct) && blocked;
            let [c, h, w] = graph.nodes[input].shape;
            let g = conv.geometry([capacity, c, h, w]).map_err(|e| e.in_node(&node.name))?;
            // A batch norm divides by its channel's spread, which amplifies rounding relative to the
            // convolution's outputs (see `winograd_training_tiles`): before one, inference keeps to
            // F(2,3) unless asked for speed, and training stays direct.
            let before_batch_norm = feeds_batch_norm(graph, id);
            let (inference, training) = match self.options.winograd {
                // Winograd's transforms amplify rounding; bf16 layers run direct (oneDNN removed its
                // Winograd for that among other reasons).
                _ if self.options.precision == Precision::Bf16 => (None, None),
                WinogradPolicy::Off => (None, None),
                _ if !chosen => (None, None),
                policy => (
                    winograd_blocked::choose_tile(&g, policy == WinogradPolicy::Fast || !before_batch_norm),
                    winograd_blocked::choose_tile(&g, false).filter(|_| !before_batch_norm),
                ),
            };
            self.winograd_tiles[id] = inference;
            self.winograd_training_tiles[id] = training;
        }
        Ok(())
    }

    /// The Winograd tile node `id` runs with in a training pass (`training`) or an inference pass.
    pub fn winograd_tile(&self, id: NodeId, training: bool) -> Option<usize> {
        if training {
            self.winograd_training_tiles[id]
        } else {
            self.winograd_tiles[id]
        }
    }

    /// Total f32 values of activations (or of gradients) per image.
    pub fn values_per_image(&self) -> usize {
        self.buffer_image_len.iter().sum()
    }
}

/// Each convolution's algorithm (`forced`, or each layer's request, or the plan's choice) and each
/// node's layout.
///
/// Where the plan chooses, a convolution with at least 16 input and output channels, or a first layer
/// with fewer than 16 input channels (`direct_stem.rs`), runs [`ConvAlgo::Direct`] when
/// the microkernel has a vector build here and its input or its output can be blocked; otherwise (a reorder into and out of the blocked layout around the call costs as much
/// as a 1×1 convolution) [`conv::choose_algo`] picks a GEMM-based algorithm.
fn conv_algos_and_layouts(graph: &Graph, options: PlanOptions) -> Result<(Vec<Option<ConvAlgo>>, Vec<Layout>)> {
    let nodes = &graph.nodes;
    let forced = options.conv_algo;
    let geometry = |id: NodeId| -> Result<Option<(ConvAlgo, ConvGeometry)>> {
        let node = &nodes[id];
        let Layer::Conv { conv: c, .. } = &node.layer else {
            return Ok(None);
        };
        let [channels, h, w] = nodes[node.inputs[0]].shape;
        let g = c.geometry([1, channels, h, w]).map_err(|e| e.in_node(&node.name))?;
        let requested = if forced == ConvAlgo::Auto { c.algo } else { forced };
        Ok(Some((requested, g)))
    };
    let convs = (0..nodes.len()).map(geometry).collect::<Result<Vec<_>>>()?;
    let chosen = convs
        .iter()
        .zip(nodes)
        .map(|(conv, node)| {
            conv.map(|(requested, g)| conv::choose_algo(requested, &g).map_err(|e| e.in_node(&node.name)))
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let vector_kernel = options.isa != Isa::Scalar;
    let mut promoted: Vec<bool> = convs
        .iter()
        .enumerate()
        .map(|(id, conv)| {
            conv.is_some_and(|(requested, g)| {
                requested == ConvAlgo::Auto
                    && vector_kernel
                    && g.out_channels >= LANES
                    && direct_writes_blocked(graph, id, &g)
            })
        })
        .collect();
    // Promoting a convolution can only add blocked nodes, and each round drops the promotions left with
    // NCHW on both sides, so this ends.
    loop {
        let algos: Vec<Option<ConvAlgo>> = chosen
            .iter()
            .zip(&promoted)
            .map(|(&algo, &p)| if p { Some(ConvAlgo::Direct) } else { algo })
            .collect();
        let layouts = layouts(graph, &algos, &convs);
        let mut changed = false;
        for (id, p) in promoted.iter_mut().enumerate() {
            // Reordering both sides would cost as much as the layer.
            let input = nodes[id].inputs.first().map_or(Layout::Nchw, |&i| layouts[i]);
            if *p && layouts[id] == Layout::Nchw && input == Layout::Nchw {
                *p = false;
                changed = true;
            }
        }
        if !changed {
            return Ok((algos, layouts));
        }
    }
}

/// Whether convolution `id` (geometry `g`), run direct, may write the blocked layout: always, except on
/// the few-channel path, whose input gradient needs NCHW unless its input is the graph's (no gradient).
fn direct_writes_blocked(graph: &Graph, id: NodeId, g: &ConvGeometry) -> bool {
    !direct::few_channels(g) || matches!(graph.nodes[graph.nodes[id].inputs[0]].layer, Layer::Input)
}

/// Each node's layout for the convolution algorithms `algos`: see [`Plan::layouts`]. `convs` holds
/// each convolution's geometry.
fn layouts(graph: &Graph, algos: &[Option<ConvAlgo>], convs: &[Option<(ConvAlgo, ConvGeometry)>]) -> Vec<Layout> {
    let nodes = &graph.nodes;
    let mut consumers = vec![Vec::new(); nodes.len()];
    for (id, node) in nodes.iter().enumerate() {
        for &input in &node.inputs {
            consumers[input].push(id);
        }
    }
    // A direct convolution reads and writes either layout (a strided one's input gradient goes through
    // im2col image by image, reordered). The few-channel path reads NCHW, and writes either layout when
    // it reads the graph's input (which needs no gradient).
    let is_direct = |id: NodeId| algos[id] == Some(ConvAlgo::Direct);
    let reads_blocked = |id: NodeId| is_direct(id) && convs[id].is_some_and(|(_, g)| !direct::few_channels(&g));
    let writes_blocked =
        |id: NodeId| is_direct(id) && convs[id].is_some_and(|(_, g)| direct_writes_blocked(graph, id, &g));
    let heads: Vec<NodeId> = std::iter::once(graph.output)
        .chain(graph.aux_outputs.iter().map(|&(id, _)| id))
        .collect();
    let mut blocked: Vec<bool> = nodes
        .iter()
        .enumerate()
        .map(|(id, node)| {
            !heads.contains(&id)
                && match node.layer {
                    Layer::Conv { .. } => writes_blocked(id),
                    Layer::MaxPool(_)
                    | Layer::AvgPool(_)
                    | Layer::BatchNorm { .. }
                    | Layer::Relu
                    | Layer::ZeroPad(_)
                    | Layer::AddScaled { .. } => true,
                    // Parts of whole blocks keep every part's channels in blocks of their own.
                    Layer::Concat => node.inputs.iter().all(|&p| nodes[p].shape[0] % LANES == 0),
                    _ => false,
                }
        })
        .collect();
    loop {
        let mut changed = false;
        for id in 0..nodes.len() {
            if !blocked[id] {
                continue;
            }
            let node = &nodes[id];
            let inputs_blocked = match node.layer {
                Layer::Conv { .. } => true,
                _ => node.inputs.iter().all(|&i| blocked[i]),
            };
            let readers_read_blocked = consumers[id].iter().all(|&c| match nodes[c].layer {
                Layer::Conv { .. } => reads_blocked(c),
                Layer::GlobalAvgPool => true,
                // The exit to the classifier's rows: a reorder (none for a 1×1 map of whole blocks,
                // which both layouts lay out alike).
                Layer::Flatten => true,
                Layer::Input | Layer::Linear { .. } | Layer::Dropout(_) | Layer::AdaptiveAvgPool(_) => false,
                _ => blocked[c],
            });
            if !(inputs_blocked && readers_read_blocked) {
                blocked[id] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    blocked
        .into_iter()
        .map(|b| if b { Layout::Blocked } else { Layout::Nchw })
        .collect()
}

/// The branch group ending in node `concat`, if it is a concat whose parts all live in place and whose
/// branches are independent chains from one source.
/// `consumers[i]` counts the nodes reading node `i`.
fn branch_group(graph: &Graph, concat: NodeId, in_place: &[Vec<bool>], consumers: &[usize]) -> Option<BranchGroup> {
    let nodes = &graph.nodes;
    let node = &nodes[concat];
    if !matches!(node.layer, Layer::Concat) || node.inputs.len() < 2 || !in_place[concat].iter().all(|&p| p) {
        return None;
    }
    let runs_alone = |id: NodeId| {
        let n = &nodes[id];
        n.inputs.len() == 1 && !matches!(n.layer, Layer::Input | Layer::Concat | Layer::Flatten)
    };
    let mut source = None;
    let mut chains = Vec::new();
    for &part in &node.inputs {
        let mut chain = vec![part];
        let mut at = part;
        loop {
            if !runs_alone(at) {
                return None;
            }
            let input = nodes[at].inputs[0];
            // The chain stops at the first node that is not private to it: that is the source.
            if consumers[input] != 1 || !runs_alone(input) {
                if *source.get_or_insert(input) != input {
                    return None;
                }
                break;
            }
            chain.push(input);
            at = input;
        }
        chain.reverse();
        chains.push(chain);
    }
    let first = chains.iter().flatten().copied().min()?;
    let members = chains.iter().map(Vec::len).sum::<usize>();
    // The chains must be exactly the nodes between `first` and the concat, so nothing else runs there.
    if members != concat - first {
        return None;
    }
    Some(BranchGroup {
        source: source?,
        first,
        concat,
        chains,
    })
}

/// Whether a batch norm reads node `id`'s output.
fn feeds_batch_norm(graph: &Graph, id: NodeId) -> bool {
    graph
        .nodes
        .iter()
        .any(|n| matches!(n.layer, Layer::BatchNorm { .. }) && n.inputs.contains(&id))
}
