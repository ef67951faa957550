//! The model zoo: each model is a graph builder whose parameter names are the PyTorch state_dict keys
//! of its reference definition, so weights move between PyTorch and incept unchanged.

mod blocks;
mod googlenet;
mod googlenet_bn;
mod googlenet_d2l;
mod inception_resnet_v2;
mod inception_tf_cifar;
mod inception_v3;
mod inception_v4;

use crate::error::{Error, Result};
use crate::graph::{Graph, Init};

pub use googlenet::googlenet;
pub use googlenet_bn::{Channels, googlenet_bn, inception_bn_block, inception_v2};
pub use googlenet_d2l::googlenet_d2l;
pub use inception_resnet_v2::inception_resnet_v2;
pub use inception_tf_cifar::inception_tf_cifar;
pub use inception_v3::inception_v3;
pub use inception_v4::inception_v4;

/// The models incept can build, by command-line name.
pub const MODEL_NAMES: &[&str] = &[
    "googlenet-d2l",
    "googlenet-bn",
    "inception-v2",
    "inception-tf-cifar",
    "inception-v3",
    "googlenet",
    "inception-v4",
    "inception-resnet-v2",
];

/// What a model is built for: input channels, input size and classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Input height and width.
    pub size: [usize; 2],
    /// Output classes.
    pub classes: usize,
}

/// The chapter's defaults for a model: googlenet-d2l takes 1×96×96 (Fashion-MNIST), googlenet-bn and
/// inception-v2 3×96×96 and inception-tf-cifar 3×32×32 (CIFAR-10); all predict 10 classes.
pub fn default_config(name: &str) -> Result<ModelConfig> {
    let config = |in_channels, size| ModelConfig {
        in_channels,
        size: [size, size],
        classes: 10,
    };
    match name {
        "googlenet-d2l" => Ok(config(1, 96)),
        "googlenet-bn" | "inception-v2" => Ok(config(3, 96)),
        "inception-tf-cifar" => Ok(config(3, 32)),
        "inception-v3" => Ok(config(3, 299)),
        "googlenet" => Ok(config(3, 224)),
        "inception-v4" | "inception-resnet-v2" => Ok(config(3, 299)),
        _ => Err(unknown(name)),
    }
}

fn unknown(name: &str) -> Error {
    Error::config(
        "model",
        format!("unknown model {name:?}; expected one of {}", MODEL_NAMES.join(", ")),
    )
}

/// Builds the graph of model `name`.
pub fn build(name: &str, config: ModelConfig) -> Result<Graph> {
    match name {
        "googlenet-d2l" => googlenet_d2l(config),
        "googlenet-bn" => googlenet_bn(config),
        "inception-v2" => inception_v2(config),
        "inception-tf-cifar" => inception_tf_cifar(config),
        "inception-v3" => inception_v3(config),
        "googlenet" => googlenet(config),
        "inception-v4" => inception_v4(config),
        "inception-resnet-v2" => inception_resnet_v2(config),
        _ => Err(unknown(name)),
    }
}

/// A graph with its parameter values (in [`Graph::params`] order).
#[derive(Debug, Clone)]
pub struct Model {
    /// The architecture.
    pub graph: Graph,
    /// One vector per parameter.
    pub params: Vec<Vec<f32>>,
}

impl Model {
    /// Parameters initialised as each spec says (PyTorch's defaults), from `seed`.
    pub fn init(graph: Graph, seed: u64) -> Model {
        let mut rng = fastrand::Rng::with_seed(seed);
        let params = graph
            .params
            .iter()
            .map(|p| match p.init {
                Init::Uniform { bound } => (0..p.len()).map(|_| (rng.f32() * 2.0 - 1.0) * bound).collect(),
                Init::Zeros => vec![0.0; p.len()],
                Init::Ones => vec![1.0; p.len()],
            })
            .collect();
        Model { graph, params }
    }

    /// The index of parameter `name`.
    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.graph.params.iter().position(|p| p.name == name)
    }
}

/// The chapter's per-block shape trace for one image: `output shape: [1, 64, 24, 24]`, ... `[1, 10]`
/// (flattened and linear outputs print as 2-D, as in PyTorch).
pub fn shape_trace(graph: &Graph) -> Vec<String> {
    graph
        .trace
        .iter()
        .map(|(_, id)| {
            let node = &graph.nodes[*id];
            let [c, h, w] = node.shape;
            let flat = matches!(
                node.layer,
                crate::graph::Layer::Flatten | crate::graph::Layer::Linear { .. }
            );
            if flat {
                format!("output shape: [1, {c}]")
            } else {
                format!("output shape: [1, {c}, {h}, {w}]")
            }
        })
        .collect()
}

/// The configuration a set of weights implies: input channels from the first convolution, classes from
/// the classifier; the input size stays the default (it does not change any weight's shape).
pub fn config_from_weights(name: &str, weights: &crate::io::checkpoint::TensorFile) -> Result<ModelConfig> {
    let mut config = default_config(name)?;
    let (stem, classifier) = match name {
        "googlenet-d2l" => ("0.0.weight", "6.weight"),
        "googlenet-bn" | "inception-v2" => ("0.0.0.weight", "6.weight"),
        "inception-tf-cifar" => ("0.weight", "10.weight"),
        "inception-v3" => ("Conv2d_1a_3x3.conv.weight", "fc.weight"),
        "googlenet" => ("conv1.conv.weight", "fc.weight"),
        "inception-v4" => ("features.0.conv.weight", "last_linear.weight"),
        "inception-resnet-v2" => ("conv2d_1a.conv.weight", "classif.weight"),
        _ => return Err(unknown(name)),
    };
    let shape = |key: &str| {
        weights.tensors.get(key).map(|t| t.0.clone()).ok_or_else(|| {
            Error::config(
                name,
                format!("the weights have no {key}, so they are not {name} weights"),
            )
        })
    };
    let stem_shape = shape(stem)?;
    let classifier_shape = shape(classifier)?;
    if stem_shape.len() != 4 || classifier_shape.len() != 2 {
        return Err(Error::config(
            name,
            format!("{stem} must be 4-D and {classifier} 2-D, found {stem_shape:?} and {classifier_shape:?}"),
        ));
    }
    config.in_channels = stem_shape[1];
    config.classes = classifier_shape[0];
    Ok(config)
}
