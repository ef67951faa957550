//! The chapter's PyTorch GoogLeNet with batch norm (`googlenet_bn` in ../shared/reference/models.py) and
//! its Inception-v2 variant (`inception_v2`): every convolution is conv + BN (eps 1e-3) + ReLU, pools are
//! unpadded 3×3/2. Inception-v2 factorizes each 5×5 path into two 3×3 convolutions and ends in a global
//! average pool; googlenet-bn ends in a 2×2 average pool and (as the chapter writes it) gives its last
//! block's 3×3 path 182 reducing channels. Node and parameter names follow the PyTorch module paths
//! (`0.0.0.weight`, `0.0.1.running_mean`, `2.0.branch3x3.1.0.weight`, ..., `6.bias`).

use super::ModelConfig;
use super::blocks;
use crate::error::Result;
use crate::geometry::Padding;
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::ops::pool::{AvgPool2d, MaxPool2d};

/// Which of the two networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    GoogLeNetBn,
    InceptionV2,
}

/// `conv_bn_relu`: the convolution as `{name}.0` (with bias), batch norm + ReLU as `{name}.1`; a square
/// kernel and padding, `[out channels, kernel, stride, pad]`.
fn conv_bn_relu(b: &mut GraphBuilder, name: &str, x: NodeId, [out, kernel, stride, pad]: [usize; 4]) -> Result<NodeId> {
    let (conv, bn) = (format!("{name}.0"), format!("{name}.1"));
    blocks::conv_bn_relu(b, [&conv, &bn], x, out, [kernel, kernel], stride, [pad, pad], true)
}

/// The block's channels: `o1`, `(o2_1, o2_3)`, `(o3_1, o3_5)`, `o4` as in the reference.
pub type Channels = (usize, (usize, usize), (usize, usize), usize);

/// `cat(1x1, 3x3(1x1), 5x5(1x1) or 3x3(3x3(1x1)), 1x1(maxpool))`, every conv with BN and ReLU.
fn inception(
    b: &mut GraphBuilder,
    variant: Variant,
    name: &str,
    x: NodeId,
    (o1, o2, o3, o4): Channels,
) -> Result<NodeId> {
    let p1 = conv_bn_relu(b, &format!("{name}.branch1x1"), x, [o1, 1, 1, 0])?;
    let p2 = conv_bn_relu(b, &format!("{name}.branch3x3.0"), x, [o2.0, 1, 1, 0])?;
    let p2 = conv_bn_relu(b, &format!("{name}.branch3x3.1"), p2, [o2.1, 3, 1, 1])?;
    let p3 = conv_bn_relu(b, &format!("{name}.branch5x5.0"), x, [o3.0, 1, 1, 0])?;
    let p3 = match variant {
        Variant::GoogLeNetBn => conv_bn_relu(b, &format!("{name}.branch5x5.1"), p3, [o3.1, 5, 1, 2])?,
        Variant::InceptionV2 => {
            let p3 = conv_bn_relu(b, &format!("{name}.branch5x5.1"), p3, [o3.1, 3, 1, 1])?;
            conv_bn_relu(b, &format!("{name}.branch5x5.2"), p3, [o3.1, 3, 1, 1])?
        }
    };
    let pool = MaxPool2d::new([3, 3], [1, 1]).with_padding(Padding::symmetric(1, 1));
    let p4 = b.max_pool(&format!("{name}.branch_pool.0"), x, pool)?;
    let p4 = conv_bn_relu(b, &format!("{name}.branch_pool.1"), p4, [o4, 1, 1, 0])?;
    b.concat(name, &[p1, p2, p3, p4])
}

/// The chapter's `InceptionBN` block on `x` with the given channels, its nodes and parameters named
/// under `name` as PyTorch names the module's (`{name}.branch1x1.0.weight`, ...).
pub fn inception_bn_block(b: &mut GraphBuilder, name: &str, x: NodeId, channels: Channels) -> Result<NodeId> {
    inception(b, Variant::GoogLeNetBn, name, x, channels)
}

fn down(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    b.max_pool(name, x, MaxPool2d::new([3, 3], [2, 2]))
}

fn build(variant: Variant, config: ModelConfig) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let [h, w] = config.size;
    let x = b.input("input", [config.in_channels, h, w])?;
    let block = |b: &mut GraphBuilder, name: &str, x, channels| inception(b, variant, name, x, channels);
    let x = conv_bn_relu(&mut b, "0.0", x, [64, 7, 2, 3])?;
    let x = down(&mut b, "0.1", x)?;
    b.mark("b1", x);
    let x = conv_bn_relu(&mut b, "1.0", x, [64, 1, 1, 0])?;
    let x = conv_bn_relu(&mut b, "1.1", x, [192, 3, 1, 1])?;
    let x = down(&mut b, "1.2", x)?;
    b.mark("b2", x);
    let x = block(&mut b, "2.0", x, (64, (96, 128), (16, 32), 32))?;
    let x = block(&mut b, "2.1", x, (128, (128, 192), (32, 96), 64))?;
    let x = down(&mut b, "2.2", x)?;
    b.mark("b3", x);
    let x = block(&mut b, "3.0", x, (192, (96, 208), (16, 48), 64))?;
    let x = block(&mut b, "3.1", x, (160, (112, 224), (24, 64), 64))?;
    let x = block(&mut b, "3.2", x, (128, (128, 256), (24, 64), 64))?;
    let x = block(&mut b, "3.3", x, (112, (144, 288), (32, 64), 64))?;
    let x = block(&mut b, "3.4", x, (256, (160, 320), (32, 128), 128))?;
    let x = down(&mut b, "3.5", x)?;
    b.mark("b4", x);
    let x = block(&mut b, "4.0", x, (256, (160, 320), (32, 128), 128))?;
    let x = match variant {
        Variant::GoogLeNetBn => {
            let x = block(&mut b, "4.1", x, (384, (182, 384), (48, 128), 128))?;
            b.avg_pool("4.2", x, AvgPool2d::new([2, 2], [2, 2]))?
        }
        Variant::InceptionV2 => {
            let x = block(&mut b, "4.1", x, (384, (192, 384), (48, 128), 128))?;
            b.global_avg_pool("4.2", x)?
        }
    };
    b.mark("b5", x);
    super::blocks::flatten_linear_head(b, ["5", "6"], x, config.classes)
}

/// googlenet-bn for `config` (the chapter trains it on CIFAR-10 resized to 3×96×96).
pub fn googlenet_bn(config: ModelConfig) -> Result<Graph> {
    build(Variant::GoogLeNetBn, config)
}

/// inception-v2: googlenet-bn with each 5×5 path as two 3×3 convolutions.
pub fn inception_v2(config: ModelConfig) -> Result<Graph> {
    build(Variant::InceptionV2, config)
}
