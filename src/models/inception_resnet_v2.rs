//! timm's Inception-ResNet-v2 (`timm.create_model("inception_resnet_v2")`): 299×299 input, ConvNormAct =
//! conv without bias + batch norm (eps 1e-3) + ReLU, a stem, Mixed_5b, 10 × Block35 (residual scale 0.17),
//! Mixed_6a, 20 × Block17 (0.10), Mixed_7a, 9 × Block8 (0.20) and a last Block8 without ReLU (scale 1),
//! a 1×1 conv to 1536, global average pooling and `classif`. Each block adds a 1×1 projection (with bias)
//! of its concatenated branches, times its scale, to its input. Names follow timm's state_dict
//! (`conv2d_1a.conv.weight`, `repeat.0.branch1.1.bn.running_mean`, `block8.conv2d.bias`, `classif.weight`).

use super::ModelConfig;
use super::blocks::basic_conv as cna;
use crate::error::Result;
use crate::geometry::Padding;
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::ops::conv::Conv2d;
use crate::ops::pool::{AvgPool2d, MaxPool2d};

const K1: [usize; 2] = [1, 1];
const K3: [usize; 2] = [3, 3];
const NO_PAD: [usize; 2] = [0, 0];

fn max_pool_3x3_2(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    b.max_pool(name, x, MaxPool2d::new([3, 3], [2, 2]))
}

/// The block's 1×1 projection `{name}.conv2d` (with bias) of `branches`, scaled and added to `x`.
fn residual(
    b: &mut GraphBuilder,
    name: &str,
    x: NodeId,
    branches: &[NodeId],
    scale: f32,
    relu: bool,
) -> Result<NodeId> {
    let cat = b.concat(&format!("{name}.cat"), branches)?;
    let [c_in, _, _] = b.shape_of(cat)?;
    let [c_out, _, _] = b.shape_of(x)?;
    let up = b.conv(
        &format!("{name}.conv2d"),
        cat,
        Conv2d::new(c_in, c_out, [1, 1]),
        true,
        false,
    )?;
    b.add_scaled(name, x, up, scale, relu)
}

fn mixed_5b(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0"), x, 96, K1, 1, NO_PAD)?;
    let b1 = cna(b, &n("branch1.0"), x, 48, K1, 1, NO_PAD)?;
    let b1 = cna(b, &n("branch1.1"), b1, 64, [5, 5], 1, [2, 2])?;
    let b2 = cna(b, &n("branch2.0"), x, 64, K1, 1, NO_PAD)?;
    let b2 = cna(b, &n("branch2.1"), b2, 96, K3, 1, [1, 1])?;
    let b2 = cna(b, &n("branch2.2"), b2, 96, K3, 1, [1, 1])?;
    let pool = AvgPool2d::new([3, 3], [1, 1])
        .with_padding(Padding::symmetric(1, 1))
        .with_count_include_pad(false);
    let b3 = b.avg_pool(&n("branch3.0"), x, pool)?;
    let b3 = cna(b, &n("branch3.1"), b3, 64, K1, 1, NO_PAD)?;
    b.concat(name, &[b0, b1, b2, b3])
}

fn block35(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0"), x, 32, K1, 1, NO_PAD)?;
    let b1 = cna(b, &n("branch1.0"), x, 32, K1, 1, NO_PAD)?;
    let b1 = cna(b, &n("branch1.1"), b1, 32, K3, 1, [1, 1])?;
    let b2 = cna(b, &n("branch2.0"), x, 32, K1, 1, NO_PAD)?;
    let b2 = cna(b, &n("branch2.1"), b2, 48, K3, 1, [1, 1])?;
    let b2 = cna(b, &n("branch2.2"), b2, 64, K3, 1, [1, 1])?;
    residual(b, name, x, &[b0, b1, b2], 0.17, true)
}

fn mixed_6a(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0"), x, 384, K3, 2, NO_PAD)?;
    let b1 = cna(b, &n("branch1.0"), x, 256, K1, 1, NO_PAD)?;
    let b1 = cna(b, &n("branch1.1"), b1, 256, K3, 1, [1, 1])?;
    let b1 = cna(b, &n("branch1.2"), b1, 384, K3, 2, NO_PAD)?;
    let b2 = max_pool_3x3_2(b, &n("branch2"), x)?;
    b.concat(name, &[b0, b1, b2])
}

fn block17(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0"), x, 192, K1, 1, NO_PAD)?;
    let b1 = cna(b, &n("branch1.0"), x, 128, K1, 1, NO_PAD)?;
    let b1 = cna(b, &n("branch1.1"), b1, 160, [1, 7], 1, [0, 3])?;
    let b1 = cna(b, &n("branch1.2"), b1, 192, [7, 1], 1, [3, 0])?;
    residual(b, name, x, &[b0, b1], 0.10, true)
}

fn mixed_7a(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0.0"), x, 256, K1, 1, NO_PAD)?;
    let b0 = cna(b, &n("branch0.1"), b0, 384, K3, 2, NO_PAD)?;
    let b1 = cna(b, &n("branch1.0"), x, 256, K1, 1, NO_PAD)?;
    let b1 = cna(b, &n("branch1.1"), b1, 288, K3, 2, NO_PAD)?;
    let b2 = cna(b, &n("branch2.0"), x, 256, K1, 1, NO_PAD)?;
    let b2 = cna(b, &n("branch2.1"), b2, 288, K3, 1, [1, 1])?;
    let b2 = cna(b, &n("branch2.2"), b2, 320, K3, 2, NO_PAD)?;
    let b3 = max_pool_3x3_2(b, &n("branch3"), x)?;
    b.concat(name, &[b0, b1, b2, b3])
}

fn block8(b: &mut GraphBuilder, name: &str, x: NodeId, scale: f32, relu: bool) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0"), x, 192, K1, 1, NO_PAD)?;
    let b1 = cna(b, &n("branch1.0"), x, 192, K1, 1, NO_PAD)?;
    let b1 = cna(b, &n("branch1.1"), b1, 224, [1, 3], 1, [0, 1])?;
    let b1 = cna(b, &n("branch1.2"), b1, 256, [3, 1], 1, [1, 0])?;
    residual(b, name, x, &[b0, b1], scale, relu)
}

/// Builds inception-resnet-v2 for `config` (3×299×299 in timm; 10 classes by default here).
pub fn inception_resnet_v2(config: ModelConfig) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let [h, w] = config.size;
    let x = b.input("input", [config.in_channels, h, w])?;
    let x = cna(&mut b, "conv2d_1a", x, 32, K3, 2, NO_PAD)?;
    let x = cna(&mut b, "conv2d_2a", x, 32, K3, 1, NO_PAD)?;
    let x = cna(&mut b, "conv2d_2b", x, 64, K3, 1, [1, 1])?;
    let x = max_pool_3x3_2(&mut b, "maxpool_3a", x)?;
    let x = cna(&mut b, "conv2d_3b", x, 80, K1, 1, NO_PAD)?;
    let x = cna(&mut b, "conv2d_4a", x, 192, K3, 1, NO_PAD)?;
    let x = max_pool_3x3_2(&mut b, "maxpool_5a", x)?;
    let mut x = mixed_5b(&mut b, "mixed_5b", x)?;
    b.mark("mixed_5b", x);
    for i in 0..10 {
        x = block35(&mut b, &format!("repeat.{i}"), x)?;
    }
    x = mixed_6a(&mut b, "mixed_6a", x)?;
    for i in 0..20 {
        x = block17(&mut b, &format!("repeat_1.{i}"), x)?;
    }
    x = mixed_7a(&mut b, "mixed_7a", x)?;
    for i in 0..9 {
        x = block8(&mut b, &format!("repeat_2.{i}"), x, 0.20, true)?;
    }
    x = block8(&mut b, "block8", x, 1.0, false)?;
    let x = cna(&mut b, "conv2d_7b", x, 1536, K1, 1, NO_PAD)?;
    b.mark("conv2d_7b", x);
    let x = b.global_avg_pool("global_pool", x)?;
    let x = b.flatten("flatten", x)?;
    let x = b.linear("classif", x, config.classes, true)?;
    b.mark("classif", x);
    b.build(x)
}
