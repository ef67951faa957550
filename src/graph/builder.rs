//! Declaring a graph: nodes in execution order, each with its layer, inputs, and per-image output shape
//! `[channels, height, width]` inferred and checked as it is added.

use crate::error::{Error, Result};
use crate::geometry::Pads;
use crate::ops::activation::Dropout;
use crate::ops::batchnorm::BatchNorm2d;
use crate::ops::conv::Conv2d;
use crate::ops::linear::Linear;
use crate::ops::pool::{AvgPool2d, MaxPool2d};

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;
/// Index of a parameter in [`Graph::params`].
pub type ParamId = usize;

/// How a parameter starts out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in `[-bound, bound]`: PyTorch's default for conv and linear weights and biases is
    /// `bound = 1 / sqrt(fan_in)` (kaiming-uniform with `a = sqrt(5)`).
    Uniform {
        /// Half-width of the interval.
        bound: f32,
    },
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
}

/// A named parameter: its PyTorch state_dict key, shape and initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// The state_dict key, e.g. `2.0.p1_1.weight`.
    pub name: String,
    /// Shape, PyTorch layout.
    pub shape: Vec<usize>,
    /// Initialisation.
    pub init: Init,
    /// Learned by the optimizer. Batch norm's running statistics are not: the forward pass moves them,
    /// they get no gradient, and optimizers leave them alone.
    pub trainable: bool,
}

impl ParamSpec {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a parameter with no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a node computes.
#[derive(Debug, Clone)]
pub enum Layer {
    /// The batch fed to the graph.
    Input,
    /// Convolution, optionally followed by a fused ReLU.
    Conv {
        /// Geometry.
        conv: Conv2d,
        /// Weight `[out, in, kh, kw]`.
        weight: ParamId,
        /// Bias `[out]`.
        bias: Option<ParamId>,
        /// Apply ReLU to the output.
        relu: bool,
    },
    /// Fully connected layer on a flat input.
    Linear {
        /// Sizes.
        linear: Linear,
        /// Weight `[out, in]`.
        weight: ParamId,
        /// Bias `[out]`.
        bias: Option<ParamId>,
    },
    /// Batch normalization, optionally followed by a fused ReLU.
    BatchNorm {
        /// Channels, eps and momentum.
        bn: BatchNorm2d,
        /// Scale `[c]` (PyTorch's `weight`).
        gamma: ParamId,
        /// Shift `[c]` (PyTorch's `bias`).
        beta: ParamId,
        /// Running mean `[c]` (not trainable).
        running_mean: ParamId,
        /// Running variance `[c]` (not trainable).
        running_var: ParamId,
        /// Apply ReLU to the output.
        relu: bool,
    },
    /// Zero padding around each plane.
    ZeroPad(Pads),
    /// Inverted dropout in training, the identity in eval.
    Dropout(Dropout),
    /// Max pooling.
    MaxPool(MaxPool2d),
    /// Average pooling.
    AvgPool(AvgPool2d),
    /// Global average pooling to `[c, 1, 1]`.
    GlobalAvgPool,
    /// Adaptive average pooling to `[c, oh, ow]` (PyTorch's bins).
    AdaptiveAvgPool([usize; 2]),
    /// ReLU as a node of its own.
    Relu,
    /// Channel concatenation of the inputs.
    Concat,
    /// `inputs[0] + scale * inputs[1]` (Inception-ResNet's scaled residual), optionally followed by ReLU.
    AddScaled {
        /// Weight of the branch.
        scale: f32,
        /// Apply ReLU to the sum.
        relu: bool,
    },
    /// `[c, h, w] -> [c*h*w, 1, 1]`; shares its input's memory.
    Flatten,
}

/// One node of a graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique name (the PyTorch module path where there is one).
    pub name: String,
    /// What it computes.
    pub layer: Layer,
    /// The nodes it reads.
    pub inputs: Vec<NodeId>,
    /// Output shape per image, `[c, h, w]`.
    pub shape: [usize; 3],
}

impl Node {
    /// Values per image of the output.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }
}

impl Layer {
    /// A short description: `conv 3x3/1 64->192+relu`, `max pool`, ...
    pub fn describe(&self) -> String {
        match self {
            Layer::Input => "input".into(),
            Layer::Conv { conv, relu, .. } => {
                let [kh, kw] = conv.kernel;
                let [sh, _] = conv.stride;
                format!(
                    "conv {kh}x{kw}/{sh} {}->{}{}",
                    conv.in_channels,
                    conv.out_channels,
                    if *relu { "+relu" } else { "" }
                )
            }
            Layer::Linear { linear, .. } => format!("linear {}->{}", linear.in_features, linear.out_features),
            Layer::BatchNorm { relu, .. } => format!("batch norm{}", if *relu { "+relu" } else { "" }),
            Layer::ZeroPad(_) => "zero pad".into(),
            Layer::Dropout(d) => format!("dropout {}", d.p),
            Layer::MaxPool(_) => "max pool".into(),
            Layer::AvgPool(_) => "avg pool".into(),
            Layer::GlobalAvgPool => "global avg pool".into(),
            Layer::AdaptiveAvgPool([h, w]) => format!("adaptive avg pool {h}x{w}"),
            Layer::Relu => "relu".into(),
            Layer::Concat => "concat".into(),
            Layer::AddScaled { scale, relu } => format!("add {scale}x{}", if *relu { "+relu" } else { "" }),
            Layer::Flatten => "flatten".into(),
        }
    }
}

/// A validated graph: nodes in execution order, parameters, the output node, and the nodes whose
/// shapes a summary prints.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Nodes, each after all of its inputs.
    pub nodes: Vec<Node>,
    /// Parameters, in state_dict order.
    pub params: Vec<ParamSpec>,
    /// The node whose output the graph returns.
    pub output: NodeId,
    /// Auxiliary classifier heads and the weight of each one's loss in training (torchvision's
    /// GoogLeNet 0.3, Inception-v3 0.4). They run only in training; eval returns `output` alone.
    pub aux_outputs: Vec<(NodeId, f32)>,
    /// `(label, node)` pairs marked for the summary's shape trace.
    pub trace: Vec<(String, NodeId)>,
}

impl Graph {
    /// The input shape per image.
    pub fn input_shape(&self) -> [usize; 3] {
        self.nodes[0].shape
    }

    /// The output length per image (classes, for a classifier).
    pub fn output_len(&self) -> usize {
        self.nodes[self.output].image_len()
    }

    /// Forward FLOPs per image (2 per multiply-add, convolutions and linear layers).
    pub fn flops_per_image(&self) -> u64 {
        self.nodes.iter().map(|n| self.node_flops(n)).sum()
    }

    /// Forward FLOPs per image of one node.
    pub fn node_flops(&self, node: &Node) -> u64 {
        match &node.layer {
            Layer::Conv { conv, .. } => {
                let [c, h, w] = self.nodes[node.inputs[0]].shape;
                conv.geometry([1, c, h, w]).map(|g| g.forward_flops()).unwrap_or(0)
            }
            Layer::Linear { linear, .. } => 2 * (linear.in_features * linear.out_features) as u64,
            _ => 0,
        }
    }

    /// Whether each node is on the main output's path (read by it, directly or not): what eval computes,
    /// and what an export writes. Auxiliary heads are off it.
    pub fn main_path(&self) -> Vec<bool> {
        let mut needed = vec![false; self.nodes.len()];
        needed[self.output] = true;
        for id in (0..self.nodes.len()).rev() {
            if needed[id] {
                for &input in &self.nodes[id].inputs {
                    needed[input] = true;
                }
            }
        }
        needed
    }

    /// Total number of trainable parameter values (PyTorch's `sum(p.numel() for p in m.parameters())`;
    /// batch norm's running statistics are buffers, not parameters).
    pub fn parameter_count(&self) -> usize {
        self.params.iter().filter(|p| p.trainable).map(ParamSpec::len).sum()
    }
}

/// Declares a graph node by node; every method checks shapes at once and names the node on error.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<Node>,
    params: Vec<ParamSpec>,
    trace: Vec<(String, NodeId)>,
    aux_outputs: Vec<(NodeId, f32)>,
}

impl GraphBuilder {
    /// An empty graph; the first node added must be [`GraphBuilder::input`].
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, name: &str, layer: Layer, inputs: Vec<NodeId>, shape: [usize; 3]) -> Result<NodeId> {
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(Error::config("graph", format!("two nodes are named {name}")));
        }
        if let Some(&bad) = inputs.iter().find(|&&i| i >= self.nodes.len()) {
            return Err(Error::config("graph", format!("node {bad} does not exist yet")).in_node(name));
        }
        self.nodes.push(Node {
            name: name.to_string(),
            layer,
            inputs,
            shape,
        });
        Ok(self.nodes.len() - 1)
    }

    fn param(&mut self, name: String, shape: Vec<usize>, init: Init) -> Result<ParamId> {
        self.add_param(name, shape, init, true)
    }

    fn add_param(&mut self, name: String, shape: Vec<usize>, init: Init, trainable: bool) -> Result<ParamId> {
        if self.params.iter().any(|p| p.name == name) {
            return Err(Error::config("graph", format!("two parameters are named {name}")));
        }
        self.params.push(ParamSpec {
            name,
            shape,
            init,
            trainable,
        });
        Ok(self.params.len() - 1)
    }

    /// The per-image output shape of `node`, `[c, h, w]`.
    pub fn shape_of(&self, node: NodeId) -> Result<[usize; 3]> {
        self.shape(node)
    }

    fn shape(&self, node: NodeId) -> Result<[usize; 3]> {
        self.nodes
            .get(node)
            .map(|n| n.shape)
            .ok_or_else(|| Error::config("graph", format!("node {node} does not exist yet")))
    }

    /// The graph's input, `[c, h, w]` per image.
    pub fn input(&mut self, name: &str, shape: [usize; 3]) -> Result<NodeId> {
        if !self.nodes.is_empty() {
            return Err(Error::config("graph", "the input must be the first node").in_node(name));
        }
        if shape.contains(&0) {
            return Err(Error::shape("graph input", "[c, h, w] all at least 1", format!("{shape:?}")).in_node(name));
        }
        self.add(name, Layer::Input, vec![], shape)
    }

    /// A convolution with parameters `{name}.weight` (and `{name}.bias`), optionally with a fused ReLU.
    pub fn conv(&mut self, name: &str, x: NodeId, conv: Conv2d, bias: bool, relu: bool) -> Result<NodeId> {
        let bias_name = bias.then(|| format!("{name}.bias"));
        self.conv_with_params(name, x, conv, &format!("{name}.weight"), bias_name.as_deref(), relu)
    }

    /// [`GraphBuilder::conv`] with the parameters named as given (an imported graph's initializers).
    pub fn conv_with_params(
        &mut self,
        name: &str,
        x: NodeId,
        conv: Conv2d,
        weight_name: &str,
        bias_name: Option<&str>,
        relu: bool,
    ) -> Result<NodeId> {
        let [c, h, w] = self.shape(x).map_err(|e| e.in_node(name))?;
        let g = conv.geometry([1, c, h, w]).map_err(|e| e.in_node(name))?;
        let fan_in = g.patch_len();
        let init = Init::Uniform {
            bound: 1.0 / (fan_in as f32).sqrt(),
        };
        let weight = self.param(weight_name.to_string(), conv.weight_shape().to_vec(), init)?;
        let bias = match bias_name {
            Some(b) => Some(self.param(b.to_string(), vec![conv.out_channels], init)?),
            None => None,
        };
        let [_, c, h, w] = g.output_shape();
        self.add(
            name,
            Layer::Conv {
                conv,
                weight,
                bias,
                relu,
            },
            vec![x],
            [c, h, w],
        )
    }

    /// A linear layer on a flat input (`[features, 1, 1]`, e.g. after [`GraphBuilder::flatten`]).
    pub fn linear(&mut self, name: &str, x: NodeId, out_features: usize, bias: bool) -> Result<NodeId> {
        let bias_name = bias.then(|| format!("{name}.bias"));
        self.linear_with_params(name, x, out_features, &format!("{name}.weight"), bias_name.as_deref())
    }

    /// [`GraphBuilder::linear`] with the parameters named as given (an imported graph's initializers).
    pub fn linear_with_params(
        &mut self,
        name: &str,
        x: NodeId,
        out_features: usize,
        weight_name: &str,
        bias_name: Option<&str>,
    ) -> Result<NodeId> {
        let shape = self.shape(x).map_err(|e| e.in_node(name))?;
        if shape[1] != 1 || shape[2] != 1 {
            return Err(
                Error::shape("linear input", "a flat input [features, 1, 1]", format!("{shape:?}")).in_node(name),
            );
        }
        let linear = Linear::new(shape[0], out_features);
        let init = Init::Uniform {
            bound: 1.0 / (shape[0] as f32).sqrt(),
        };
        let weight = self.param(weight_name.to_string(), vec![out_features, shape[0]], init)?;
        let bias = match bias_name {
            Some(b) => Some(self.param(b.to_string(), vec![out_features], init)?),
            None => None,
        };
        self.add(
            name,
            Layer::Linear { linear, weight, bias },
            vec![x],
            [out_features, 1, 1],
        )
    }

    /// Batch normalization with parameters `{name}.weight`, `{name}.bias` and running statistics
    /// `{name}.running_mean`, `{name}.running_var` (PyTorch's names and initial values), optionally with
    /// a fused ReLU.
    pub fn batch_norm(&mut self, name: &str, x: NodeId, eps: f32, relu: bool) -> Result<NodeId> {
        let shape = self.shape(x).map_err(|e| e.in_node(name))?;
        let bn = BatchNorm2d::new(shape[0]).with_eps(eps);
        let names = ["weight", "bias", "running_mean", "running_var"].map(|p| format!("{name}.{p}"));
        self.batch_norm_with_params(name, x, bn, &names, relu)
    }

    /// [`GraphBuilder::batch_norm`] with its settings and the parameters named as given, in the order
    /// scale, shift, running mean, running variance (an imported graph's initializers).
    pub fn batch_norm_with_params(
        &mut self,
        name: &str,
        x: NodeId,
        bn: BatchNorm2d,
        names: &[String; 4],
        relu: bool,
    ) -> Result<NodeId> {
        let shape = self.shape(x).map_err(|e| e.in_node(name))?;
        let c = shape[0];
        if bn.channels != c {
            return Err(Error::shape("batch norm channels", c.to_string(), bn.channels.to_string()).in_node(name));
        }
        let [g, b, m, v] = names.clone();
        let gamma = self.param(g, vec![c], Init::Ones)?;
        let beta = self.param(b, vec![c], Init::Zeros)?;
        let running_mean = self.add_param(m, vec![c], Init::Zeros, false)?;
        let running_var = self.add_param(v, vec![c], Init::Ones, false)?;
        let layer = Layer::BatchNorm {
            bn,
            gamma,
            beta,
            running_mean,
            running_var,
            relu,
        };
        self.add(name, layer, vec![x], shape)
    }

    /// Dropout with probability `p` (an error unless `0 <= p <= 1`).
    pub fn dropout(&mut self, name: &str, x: NodeId, p: f32) -> Result<NodeId> {
        let shape = self.shape(x).map_err(|e| e.in_node(name))?;
        let dropout = Dropout::new(p).map_err(|e| e.in_node(name))?;
        self.add(name, Layer::Dropout(dropout), vec![x], shape)
    }

    /// Pads each plane with zeros.
    pub fn zero_pad(&mut self, name: &str, x: NodeId, pads: Pads) -> Result<NodeId> {
        let [c, h, w] = self.shape(x).map_err(|e| e.in_node(name))?;
        let shape = [c, h + pads.top + pads.bottom, w + pads.left + pads.right];
        self.add(name, Layer::ZeroPad(pads), vec![x], shape)
    }

    /// Max pooling.
    pub fn max_pool(&mut self, name: &str, x: NodeId, pool: MaxPool2d) -> Result<NodeId> {
        let [c, h, w] = self.shape(x).map_err(|e| e.in_node(name))?;
        let [_, c, h, w] = pool.output_shape([1, c, h, w]).map_err(|e| e.in_node(name))?;
        self.add(name, Layer::MaxPool(pool), vec![x], [c, h, w])
    }

    /// Average pooling.
    pub fn avg_pool(&mut self, name: &str, x: NodeId, pool: AvgPool2d) -> Result<NodeId> {
        let [c, h, w] = self.shape(x).map_err(|e| e.in_node(name))?;
        let [_, c, h, w] = pool.output_shape([1, c, h, w]).map_err(|e| e.in_node(name))?;
        self.add(name, Layer::AvgPool(pool), vec![x], [c, h, w])
    }

    /// Adaptive average pooling to `[c, oh, ow]`; the output may not be larger than the input.
    pub fn adaptive_avg_pool(&mut self, name: &str, x: NodeId, output: [usize; 2]) -> Result<NodeId> {
        let [c, h, w] = self.shape(x).map_err(|e| e.in_node(name))?;
        if output.contains(&0) || output[0] > h || output[1] > w {
            return Err(Error::shape(
                "adaptive_avg_pool2d output size",
                format!("1 to [{h}, {w}] (the input size)"),
                format!("{output:?}"),
            )
            .in_node(name));
        }
        self.add(name, Layer::AdaptiveAvgPool(output), vec![x], [c, output[0], output[1]])
    }

    /// Global average pooling to `[c, 1, 1]`.
    pub fn global_avg_pool(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        let [c, _, _] = self.shape(x).map_err(|e| e.in_node(name))?;
        self.add(name, Layer::GlobalAvgPool, vec![x], [c, 1, 1])
    }

    /// A separate ReLU node (convolutions fuse theirs instead).
    pub fn relu(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        let shape = self.shape(x).map_err(|e| e.in_node(name))?;
        self.add(name, Layer::Relu, vec![x], shape)
    }

    /// Concatenates along channels; all parts must share height and width.
    pub fn concat(&mut self, name: &str, parts: &[NodeId]) -> Result<NodeId> {
        let shapes = parts
            .iter()
            .map(|&p| self.shape(p))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| e.in_node(name))?;
        let Some(first) = shapes.first() else {
            return Err(Error::config("concat", "at least one input is needed").in_node(name));
        };
        for (i, s) in shapes.iter().enumerate() {
            if s[1..] != first[1..] {
                let expected = format!("[c, {}, {}]", first[1], first[2]);
                return Err(Error::shape(&format!("concat input {i}"), expected, format!("{s:?}")).in_node(name));
            }
        }
        let channels = shapes.iter().map(|s| s[0]).sum();
        self.add(name, Layer::Concat, parts.to_vec(), [channels, first[1], first[2]])
    }

    /// `residual + scale * branch` (shapes must match), optionally followed by ReLU.
    pub fn add_scaled(
        &mut self,
        name: &str,
        residual: NodeId,
        branch: NodeId,
        scale: f32,
        relu: bool,
    ) -> Result<NodeId> {
        let r = self.shape(residual).map_err(|e| e.in_node(name))?;
        let bs = self.shape(branch).map_err(|e| e.in_node(name))?;
        if r != bs {
            return Err(Error::shape("residual branch", format!("{r:?}"), format!("{bs:?}")).in_node(name));
        }
        self.add(name, Layer::AddScaled { scale, relu }, vec![residual, branch], r)
    }

    /// Flattens to `[c*h*w, 1, 1]`.
    pub fn flatten(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        let shape = self.shape(x).map_err(|e| e.in_node(name))?;
        self.add(name, Layer::Flatten, vec![x], [shape.iter().product(), 1, 1])
    }

    /// Applies ReLU to `node`'s output in place when its layer can fuse one (convolution, batch norm,
    /// residual sum) and it has none yet; false otherwise. The caller makes sure no other node has
    /// read the pre-activation value.
    pub fn fuse_relu(&mut self, node: NodeId) -> bool {
        match self.nodes.get_mut(node).map(|n| &mut n.layer) {
            Some(Layer::Conv { relu, .. } | Layer::BatchNorm { relu, .. } | Layer::AddScaled { relu, .. })
                if !*relu =>
            {
                *relu = true;
                true
            }
            _ => false,
        }
    }

    /// How many nodes read `node`.
    pub fn readers(&self, node: NodeId) -> usize {
        self.nodes
            .iter()
            .map(|n| n.inputs.iter().filter(|&&i| i == node).count())
            .sum()
    }

    /// Makes `node` an auxiliary classifier whose loss counts `weight` times in training.
    pub fn aux_output(&mut self, node: NodeId, weight: f32) -> Result<()> {
        self.shape(node)?;
        self.aux_outputs.push((node, weight));
        Ok(())
    }

    /// Marks `node` for the summary's shape trace under `label`.
    pub fn mark(&mut self, label: &str, node: NodeId) {
        self.trace.push((label.to_string(), node));
    }

    /// Finishes the graph with `output` as its result.
    pub fn build(self, output: NodeId) -> Result<Graph> {
        if self
            .nodes
            .first()
            .map(|n| !matches!(n.layer, Layer::Input))
            .unwrap_or(true)
        {
            return Err(Error::config("graph", "a graph needs an input node first"));
        }
        if output >= self.nodes.len() {
            return Err(Error::config("graph", format!("output node {output} does not exist")));
        }
        for &(aux, _) in &self.aux_outputs {
            if self.nodes[aux].shape != self.nodes[output].shape {
                return Err(Error::shape(
                    "auxiliary output",
                    format!("the main output's shape {:?}", self.nodes[output].shape),
                    format!("{:?}", self.nodes[aux].shape),
                )
                .in_node(&self.nodes[aux].name));
            }
        }
        Ok(Graph {
            nodes: self.nodes,
            params: self.params,
            output,
            aux_outputs: self.aux_outputs,
            trace: self.trace,
        })
    }
}
