//! timm's Inception-v4 (`timm.create_model("inception_v4")`, Szegedy et al. 2016): 299×299 input,
//! ConvNormAct = conv without bias + batch norm (eps 1e-3) + ReLU, a stem of Mixed3a/4a/5a, then
//! 4 × InceptionA, ReductionA, 7 × InceptionB, ReductionB, 3 × InceptionC, global average pooling and
//! `last_linear`. The branch average pools leave padding out of the count. Names follow timm's state_dict
//! (`features.0.conv.weight`, `features.6.branch3.1.bn.running_var`, `last_linear.bias`).

use super::ModelConfig;
use super::blocks::basic_conv as cna;
use crate::error::Result;
use crate::geometry::Padding;
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::ops::pool::{AvgPool2d, MaxPool2d};

const K1: [usize; 2] = [1, 1];
const K3: [usize; 2] = [3, 3];
const ROW7: ([usize; 2], [usize; 2]) = ([1, 7], [0, 3]);
const COL7: ([usize; 2], [usize; 2]) = ([7, 1], [3, 0]);
const ROW3: ([usize; 2], [usize; 2]) = ([1, 3], [0, 1]);
const COL3: ([usize; 2], [usize; 2]) = ([3, 1], [1, 0]);

fn max_pool_3x3_2(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    b.max_pool(name, x, MaxPool2d::new([3, 3], [2, 2]))
}

/// The 3×3/1 average pool of the Inception blocks, padding 1 left out of the count.
fn branch_avg_pool(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let pool = AvgPool2d::new([3, 3], [1, 1])
        .with_padding(Padding::symmetric(1, 1))
        .with_count_include_pad(false);
    b.avg_pool(name, x, pool)
}

fn mixed_3a(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let pool = max_pool_3x3_2(b, &format!("{name}.maxpool"), x)?;
    let conv = cna(b, &format!("{name}.conv"), x, 96, K3, 2, [0, 0])?;
    b.concat(name, &[pool, conv])
}

fn mixed_4a(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0.0"), x, 64, K1, 1, [0, 0])?;
    let b0 = cna(b, &n("branch0.1"), b0, 96, K3, 1, [0, 0])?;
    let b1 = cna(b, &n("branch1.0"), x, 64, K1, 1, [0, 0])?;
    let b1 = cna(b, &n("branch1.1"), b1, 64, ROW7.0, 1, ROW7.1)?;
    let b1 = cna(b, &n("branch1.2"), b1, 64, COL7.0, 1, COL7.1)?;
    let b1 = cna(b, &n("branch1.3"), b1, 96, K3, 1, [0, 0])?;
    b.concat(name, &[b0, b1])
}

fn mixed_5a(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let conv = cna(b, &format!("{name}.conv"), x, 192, K3, 2, [0, 0])?;
    let pool = max_pool_3x3_2(b, &format!("{name}.maxpool"), x)?;
    b.concat(name, &[conv, pool])
}

fn inception_a(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0"), x, 96, K1, 1, [0, 0])?;
    let b1 = cna(b, &n("branch1.0"), x, 64, K1, 1, [0, 0])?;
    let b1 = cna(b, &n("branch1.1"), b1, 96, K3, 1, [1, 1])?;
    let b2 = cna(b, &n("branch2.0"), x, 64, K1, 1, [0, 0])?;
    let b2 = cna(b, &n("branch2.1"), b2, 96, K3, 1, [1, 1])?;
    let b2 = cna(b, &n("branch2.2"), b2, 96, K3, 1, [1, 1])?;
    let b3 = branch_avg_pool(b, &n("branch3.0"), x)?;
    let b3 = cna(b, &n("branch3.1"), b3, 96, K1, 1, [0, 0])?;
    b.concat(name, &[b0, b1, b2, b3])
}

fn reduction_a(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0"), x, 384, K3, 2, [0, 0])?;
    let b1 = cna(b, &n("branch1.0"), x, 192, K1, 1, [0, 0])?;
    let b1 = cna(b, &n("branch1.1"), b1, 224, K3, 1, [1, 1])?;
    let b1 = cna(b, &n("branch1.2"), b1, 256, K3, 2, [0, 0])?;
    let b2 = max_pool_3x3_2(b, &n("branch2"), x)?;
    b.concat(name, &[b0, b1, b2])
}

fn inception_b(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0"), x, 384, K1, 1, [0, 0])?;
    let b1 = cna(b, &n("branch1.0"), x, 192, K1, 1, [0, 0])?;
    let b1 = cna(b, &n("branch1.1"), b1, 224, ROW7.0, 1, ROW7.1)?;
    let b1 = cna(b, &n("branch1.2"), b1, 256, COL7.0, 1, COL7.1)?;
    let b2 = cna(b, &n("branch2.0"), x, 192, K1, 1, [0, 0])?;
    let b2 = cna(b, &n("branch2.1"), b2, 192, COL7.0, 1, COL7.1)?;
    let b2 = cna(b, &n("branch2.2"), b2, 224, ROW7.0, 1, ROW7.1)?;
    let b2 = cna(b, &n("branch2.3"), b2, 224, COL7.0, 1, COL7.1)?;
    let b2 = cna(b, &n("branch2.4"), b2, 256, ROW7.0, 1, ROW7.1)?;
    let b3 = branch_avg_pool(b, &n("branch3.0"), x)?;
    let b3 = cna(b, &n("branch3.1"), b3, 128, K1, 1, [0, 0])?;
    b.concat(name, &[b0, b1, b2, b3])
}

fn reduction_b(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0.0"), x, 192, K1, 1, [0, 0])?;
    let b0 = cna(b, &n("branch0.1"), b0, 192, K3, 2, [0, 0])?;
    let b1 = cna(b, &n("branch1.0"), x, 256, K1, 1, [0, 0])?;
    let b1 = cna(b, &n("branch1.1"), b1, 256, ROW7.0, 1, ROW7.1)?;
    let b1 = cna(b, &n("branch1.2"), b1, 320, COL7.0, 1, COL7.1)?;
    let b1 = cna(b, &n("branch1.3"), b1, 320, K3, 2, [0, 0])?;
    let b2 = max_pool_3x3_2(b, &n("branch2"), x)?;
    b.concat(name, &[b0, b1, b2])
}

fn inception_c(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b0 = cna(b, &n("branch0"), x, 256, K1, 1, [0, 0])?;
    let b1 = cna(b, &n("branch1_0"), x, 384, K1, 1, [0, 0])?;
    let b1a = cna(b, &n("branch1_1a"), b1, 256, ROW3.0, 1, ROW3.1)?;
    let b1b = cna(b, &n("branch1_1b"), b1, 256, COL3.0, 1, COL3.1)?;
    let b1 = b.concat(&n("branch1"), &[b1a, b1b])?;
    let b2 = cna(b, &n("branch2_0"), x, 384, K1, 1, [0, 0])?;
    let b2 = cna(b, &n("branch2_1"), b2, 448, COL3.0, 1, COL3.1)?;
    let b2 = cna(b, &n("branch2_2"), b2, 512, ROW3.0, 1, ROW3.1)?;
    let b2a = cna(b, &n("branch2_3a"), b2, 256, ROW3.0, 1, ROW3.1)?;
    let b2b = cna(b, &n("branch2_3b"), b2, 256, COL3.0, 1, COL3.1)?;
    let b2 = b.concat(&n("branch2"), &[b2a, b2b])?;
    let b3 = branch_avg_pool(b, &n("branch3.0"), x)?;
    let b3 = cna(b, &n("branch3.1"), b3, 256, K1, 1, [0, 0])?;
    b.concat(name, &[b0, b1, b2, b3])
}

/// Builds inception-v4 for `config` (3×299×299 in timm; 10 classes by default here).
pub fn inception_v4(config: ModelConfig) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let [h, w] = config.size;
    let x = b.input("input", [config.in_channels, h, w])?;
    let x = cna(&mut b, "features.0", x, 32, K3, 2, [0, 0])?;
    let x = cna(&mut b, "features.1", x, 32, K3, 1, [0, 0])?;
    let x = cna(&mut b, "features.2", x, 64, K3, 1, [1, 1])?;
    let x = mixed_3a(&mut b, "features.3", x)?;
    let x = mixed_4a(&mut b, "features.4", x)?;
    let mut x = mixed_5a(&mut b, "features.5", x)?;
    b.mark("stem", x);
    for i in 6..10 {
        x = inception_a(&mut b, &format!("features.{i}"), x)?;
    }
    x = reduction_a(&mut b, "features.10", x)?;
    b.mark("reduction A", x);
    for i in 11..18 {
        x = inception_b(&mut b, &format!("features.{i}"), x)?;
    }
    x = reduction_b(&mut b, "features.18", x)?;
    b.mark("reduction B", x);
    for i in 19..22 {
        x = inception_c(&mut b, &format!("features.{i}"), x)?;
    }
    b.mark("features", x);
    let x = b.global_avg_pool("global_pool", x)?;
    let x = b.flatten("flatten", x)?;
    let x = b.linear("last_linear", x, config.classes, true)?;
    b.mark("last_linear", x);
    b.build(x)
}
