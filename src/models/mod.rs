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
pub mod pretrained;

use crate::error::{Error, Result};
use crate::graph::{Graph, Init};

pub use googlenet::googlenet;
pub use googlenet_bn::{Channels, googlenet_bn, inception_bn_block, inception_v2};
pub use googlenet_d2l::googlenet_d2l;
pub use inception_resnet_v2::inception_resnet_v2;
pub use inception_tf_cifar::inception_tf_cifar;
pub use inception_v3::inception_v3;
pub use inception_v4::inception_v4;

/// What incept knows about one model: everything the command line, `summary` and weight loading read.
#[derive(Debug, Clone, Copy)]
pub struct ModelEntry {
    /// The command-line name.
    pub name: &'static str,
    /// Builds the graph.
    pub build: fn(ModelConfig) -> Result<Graph>,
    /// Input channels of the chapter's / reference recipe.
    pub in_channels: usize,
    /// Native input size (square).
    pub size: usize,
    /// The state_dict names of the first convolution's weight (its shape gives the input channels) and
    /// of the classifier's weight (its shape gives the classes).
    pub stem_weight: &'static str,
    /// See `stem_weight`.
    pub classifier_weight: &'static str,
    /// Whose state_dict names its weights use, so those files load.
    pub weight_names: &'static str,
    /// The name prefix of each auxiliary classifier's parameters (empty: the model has none).
    pub aux_prefixes: &'static [&'static str],
    /// How weights from another library (files that are not incept checkpoints) expect their input.
    pub pretrained: Option<pretrained::Pretrained>,
}

/// A model of `../shared/reference/models.py` (3 input channels, no auxiliary heads, no other
/// library's weights), at native input `size`, whose first and last weights are named as given.
const fn reference_model(
    name: &'static str,
    build: fn(ModelConfig) -> Result<Graph>,
    size: usize,
    stem_weight: &'static str,
    classifier_weight: &'static str,
) -> ModelEntry {
    ModelEntry {
        name,
        build,
        in_channels: 3,
        size,
        stem_weight,
        classifier_weight,
        weight_names: "the reference PyTorch model (models.py)",
        aux_prefixes: &[],
        pretrained: None,
    }
}

/// Every model incept can build, in the order the documentation lists them.
pub const MODELS: &[ModelEntry] = &[
    ModelEntry {
        name: "googlenet-d2l",
        build: googlenet_d2l,
        in_channels: 1,
        size: 96,
        stem_weight: "0.0.weight",
        classifier_weight: "6.weight",
        weight_names: "the chapter's PyTorch model (../shared/reference/models.py)",
        aux_prefixes: &[],
        pretrained: None,
    },
    reference_model("googlenet-bn", googlenet_bn, 96, "0.0.0.weight", "6.weight"),
    reference_model("inception-v2", inception_v2, 96, "0.0.0.weight", "6.weight"),
    reference_model("inception-tf-cifar", inception_tf_cifar, 32, "0.weight", "10.weight"),
    ModelEntry {
        name: "inception-v3",
        build: inception_v3,
        in_channels: 3,
        size: 299,
        stem_weight: "Conv2d_1a_3x3.conv.weight",
        classifier_weight: "fc.weight",
        weight_names: "torchvision's inception_v3 (AuxLogits optional)",
        aux_prefixes: &["AuxLogits."],
        pretrained: Some(pretrained::TORCHVISION_INCEPTION_V3),
    },
    ModelEntry {
        name: "googlenet",
        build: googlenet,
        in_channels: 3,
        size: 224,
        stem_weight: "conv1.conv.weight",
        classifier_weight: "fc.weight",
        weight_names: "torchvision's googlenet (aux1, aux2 optional)",
        aux_prefixes: &["aux1.", "aux2."],
        pretrained: Some(pretrained::TORCHVISION_GOOGLENET),
    },
    ModelEntry {
        name: "inception-v4",
        build: inception_v4,
        in_channels: 3,
        size: 299,
        stem_weight: "features.0.conv.weight",
        classifier_weight: "last_linear.weight",
        weight_names: "timm's inception_v4",
        aux_prefixes: &[],
        pretrained: Some(pretrained::TIMM_INCEPTION_V4),
    },
    ModelEntry {
        name: "inception-resnet-v2",
        build: inception_resnet_v2,
        in_channels: 3,
        size: 299,
        stem_weight: "conv2d_1a.conv.weight",
        classifier_weight: "classif.weight",
        weight_names: "timm's inception_resnet_v2",
        aux_prefixes: &[],
        pretrained: Some(pretrained::TIMM_INCEPTION_RESNET_V2),
    },
];

/// The models incept can build, by command-line name.
pub fn model_names() -> Vec<&'static str> {
    MODELS.iter().map(|m| m.name).collect()
}

/// The entry of model `name`, or an error listing the names there are.
pub fn entry(name: &str) -> Result<&'static ModelEntry> {
    if name == "onnx" {
        return Err(Error::config(
            "model",
            "these weights belong to a graph imported from ONNX, which the zoo cannot build; run the ONNX file \
             (a training run from one writes OUT/model.onnx with its weights)",
        ));
    }
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        Error::config(
            "model",
            format!("unknown model {name:?}; expected one of {}", model_names().join(", ")),
        )
    })
}

/// What a model is built for: input channels, input size and classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Input height and width.
    pub size: [usize; 2],
    /// Output classes.
    pub classes: usize,
    /// Whether to build the auxiliary classifiers of the models that have them (googlenet,
    /// inception-v3): they serve training only, and weights saved for inference may leave them out.
    pub aux_heads: bool,
}

/// A model's native configuration: googlenet-d2l takes 1×96×96 (Fashion-MNIST resized as the chapter
/// does), googlenet-bn and inception-v2 3×96×96, inception-tf-cifar 3×32×32 (CIFAR-10), googlenet
/// 3×224×224, the others 3×299×299; all predict 10 classes.
pub fn default_config(name: &str) -> Result<ModelConfig> {
    let m = entry(name)?;
    Ok(ModelConfig {
        in_channels: m.in_channels,
        size: [m.size, m.size],
        classes: 10,
        aux_heads: true,
    })
}

/// Builds the graph of model `name`.
pub fn build(name: &str, config: ModelConfig) -> Result<Graph> {
    (entry(name)?.build)(config)
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
/// the classifier, auxiliary heads if the weights have them; the input size stays the native one (it
/// does not change any weight's shape).
pub fn config_from_weights(name: &str, weights: &crate::io::checkpoint::TensorFile) -> Result<ModelConfig> {
    let mut config = default_config(name)?;
    let m = entry(name)?;
    let (stem, classifier) = (m.stem_weight, m.classifier_weight);
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
    // Weights saved for inference (torchvision's `aux_logits=False`) have no auxiliary heads.
    config.aux_heads = m
        .aux_prefixes
        .iter()
        .any(|prefix| weights.tensors.keys().any(|k| k.starts_with(prefix)));
    Ok(config)
}

/// The model whose state_dict `weights` is, for files that do not record one (PyTorch's): the one model
/// whose every parameter the file holds, with nothing left over (auxiliary heads may be absent).
/// An error when none or several fit.
pub fn detect(weights: &crate::io::checkpoint::TensorFile, path: &std::path::Path) -> Result<&'static str> {
    let fits = |m: &ModelEntry| -> bool {
        let Ok(config) = config_from_weights(m.name, weights) else {
            return false;
        };
        build(m.name, config).is_ok_and(|graph| weights.fits(&graph, path).is_ok())
    };
    let found: Vec<&'static str> = MODELS.iter().filter(|m| fits(m)).map(|m| m.name).collect();
    match found[..] {
        [one] => Ok(one),
        [] => Err(Error::file(
            path.display(),
            format!(
                "the state_dict of one of the models ({}), but its tensors fit none of them; pass --model to see what differs",
                model_names().join(", ")
            ),
        )),
        _ => Err(Error::file(
            path.display(),
            format!("weights that fit {}; pass --model to choose", found.join(" and ")),
        )),
    }
}
