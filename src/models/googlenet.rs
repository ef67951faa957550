//! torchvision's GoogLeNet (`torchvision.models.googlenet(aux_logits=True)`, `transform_input` outside):
//! BasicConv2d = conv without bias + batch norm (eps 1e-3) + ReLU, ceil-mode max pools, two auxiliary
//! classifiers after inception4a and inception4d (each loss weighted 0.3 in training, unused in eval),
//! dropout 0.2 before the classifier and 0.7 inside the auxiliary heads. As in torchvision, the "5×5"
//! branch uses a 3×3 convolution. Names follow torchvision's state_dict (`conv1.conv.weight`,
//! `inception3a.branch2.1.bn.running_mean`, `aux1.fc2.weight`, `fc.bias`). The auxiliary heads need the
//! 14×14 stage to be at least 4×4; on smaller inputs they are left out, and so they are when the
//! config says `aux_heads: false` (weights saved with `aux_logits=False`). `transform_input` is applied
//! outside the graph, by [`crate::classifier::Classifier`], when the weights come from torchvision.

use super::ModelConfig;
use super::blocks::basic_conv;
use crate::error::Result;
use crate::geometry::Padding;
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::ops::pool::MaxPool2d;

/// Weight of each auxiliary classifier's loss in training.
pub const AUX_WEIGHT: f32 = 0.3;

/// `BasicConv2d` with a square kernel and padding: `[out channels, kernel, stride, pad]`.
fn basic(b: &mut GraphBuilder, name: &str, x: NodeId, [out, kernel, stride, pad]: [usize; 4]) -> Result<NodeId> {
    basic_conv(b, name, x, out, [kernel, kernel], stride, [pad, pad])
}

fn ceil_pool(b: &mut GraphBuilder, name: &str, x: NodeId, kernel: usize, stride: usize, pad: usize) -> Result<NodeId> {
    let pool = MaxPool2d::new([kernel, kernel], [stride, stride])
        .with_padding(Padding::symmetric(pad, pad))
        .with_ceil_mode(true);
    b.max_pool(name, x, pool)
}

/// torchvision's `Inception(in, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj)`.
fn inception(b: &mut GraphBuilder, name: &str, x: NodeId, [c1, c3r, c3, c5r, c5, pool]: [usize; 6]) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b1 = basic(b, &n("branch1"), x, [c1, 1, 1, 0])?;
    let b2 = basic(b, &n("branch2.0"), x, [c3r, 1, 1, 0])?;
    let b2 = basic(b, &n("branch2.1"), b2, [c3, 3, 1, 1])?;
    let b3 = basic(b, &n("branch3.0"), x, [c5r, 1, 1, 0])?;
    let b3 = basic(b, &n("branch3.1"), b3, [c5, 3, 1, 1])?;
    let b4 = ceil_pool(b, &n("branch4.0"), x, 3, 1, 1)?;
    let b4 = basic(b, &n("branch4.1"), b4, [pool, 1, 1, 0])?;
    b.concat(name, &[b1, b2, b3, b4])
}

/// `InceptionAux`: adaptive average pool to 4×4, 1×1 conv to 128, fc1 (2048 → 1024) + ReLU, dropout 0.7,
/// fc2.
fn aux_head(b: &mut GraphBuilder, name: &str, x: NodeId, classes: usize) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let y = b.adaptive_avg_pool(&n("pool"), x, [4, 4])?;
    let y = basic(b, &n("conv"), y, [128, 1, 1, 0])?;
    let y = b.flatten(&n("flatten"), y)?;
    let y = b.linear(&n("fc1"), y, 1024, true)?;
    let y = b.relu(&n("relu"), y)?;
    let y = b.dropout(&n("dropout"), y, 0.7)?;
    b.linear(&n("fc2"), y, classes, true)
}

/// Builds torchvision's googlenet for `config` (3×224×224 there; 10 classes by default here).
pub fn googlenet(config: ModelConfig) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let [h, w] = config.size;
    let x = b.input("input", [config.in_channels, h, w])?;
    let x = basic(&mut b, "conv1", x, [64, 7, 2, 3])?;
    let x = ceil_pool(&mut b, "maxpool1", x, 3, 2, 0)?;
    let x = basic(&mut b, "conv2", x, [64, 1, 1, 0])?;
    let x = basic(&mut b, "conv3", x, [192, 3, 1, 1])?;
    let x = ceil_pool(&mut b, "maxpool2", x, 3, 2, 0)?;
    b.mark("stem", x);
    let x = inception(&mut b, "inception3a", x, [64, 96, 128, 16, 32, 32])?;
    let x = inception(&mut b, "inception3b", x, [128, 128, 192, 32, 96, 64])?;
    let x = ceil_pool(&mut b, "maxpool3", x, 3, 2, 0)?;
    b.mark("inception3", x);
    let x4a = inception(&mut b, "inception4a", x, [192, 96, 208, 16, 48, 64])?;
    let x = inception(&mut b, "inception4b", x4a, [160, 112, 224, 24, 64, 64])?;
    let x = inception(&mut b, "inception4c", x, [128, 128, 256, 24, 64, 64])?;
    let x4d = inception(&mut b, "inception4d", x, [112, 144, 288, 32, 64, 64])?;
    let x = inception(&mut b, "inception4e", x4d, [256, 160, 320, 32, 128, 128])?;
    let x = ceil_pool(&mut b, "maxpool4", x, 2, 2, 0)?;
    b.mark("inception4", x);
    let x = inception(&mut b, "inception5a", x, [256, 160, 320, 32, 128, 128])?;
    let x = inception(&mut b, "inception5b", x, [384, 192, 384, 48, 128, 128])?;
    b.mark("inception5", x);
    // Declared here, after inception5b, as torchvision registers them (so the parameters come in its
    // state_dict order); they read inception4a's and inception4d's outputs.
    if config.aux_heads && b.shape_of(x4a)?[1] >= 4 {
        let aux1 = aux_head(&mut b, "aux1", x4a, config.classes)?;
        b.aux_output(aux1, AUX_WEIGHT)?;
        let aux2 = aux_head(&mut b, "aux2", x4d, config.classes)?;
        b.aux_output(aux2, AUX_WEIGHT)?;
    }
    let x = b.global_avg_pool("avgpool", x)?;
    let x = b.dropout("dropout", x, 0.2)?;
    let x = b.flatten("flatten", x)?;
    let x = b.linear("fc", x, config.classes, true)?;
    b.mark("fc", x);
    b.build(x)
}
