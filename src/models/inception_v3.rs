//! torchvision's Inception-v3 (`torchvision.models.inception_v3(aux_logits=True)`): 299×299 input,
//! BasicConv2d = conv without bias + batch norm (eps 1e-3) + ReLU, blocks A to E with factorized 1×7/7×1
//! and split 1×3/3×1 branches, an auxiliary classifier after Mixed_6e (its loss weighted 0.4 in training,
//! unused in eval), dropout 0.5 before the classifier. Names follow torchvision's state_dict
//! (`Conv2d_1a_3x3.conv.weight`, `Mixed_6b.branch7x7_2.bn.running_var`, `AuxLogits.fc.weight`, `fc.bias`).
//! The auxiliary head needs the 17×17 stage to be at least 17×17 (299×299 input); on smaller inputs it
//! is left out, as PyTorch could not run it either; so it is when the config says `aux_heads: false`
//! (weights saved with `aux_logits=False`).

use super::ModelConfig;
use super::blocks::basic_conv as basic;
use crate::error::Result;
use crate::geometry::Padding;
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::ops::pool::{AvgPool2d, MaxPool2d};

/// Weight of the auxiliary classifier's loss in training.
pub const AUX_WEIGHT: f32 = 0.4;
/// Dropout before the classifier.
pub const DROPOUT: f32 = 0.5;

fn k(n: usize) -> [usize; 2] {
    [n, n]
}

/// 3×3/1 average pool with padding 1, counting the padding (PyTorch's default) as torchvision's blocks do.
fn avg_pool_3x3(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    b.avg_pool(
        name,
        x,
        AvgPool2d::new([3, 3], [1, 1]).with_padding(Padding::symmetric(1, 1)),
    )
}

fn inception_a(b: &mut GraphBuilder, name: &str, x: NodeId, pool_features: usize) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b1 = basic(b, &n("branch1x1"), x, 64, k(1), 1, [0, 0])?;
    let b5 = basic(b, &n("branch5x5_1"), x, 48, k(1), 1, [0, 0])?;
    let b5 = basic(b, &n("branch5x5_2"), b5, 64, k(5), 1, [2, 2])?;
    let b3 = basic(b, &n("branch3x3dbl_1"), x, 64, k(1), 1, [0, 0])?;
    let b3 = basic(b, &n("branch3x3dbl_2"), b3, 96, k(3), 1, [1, 1])?;
    let b3 = basic(b, &n("branch3x3dbl_3"), b3, 96, k(3), 1, [1, 1])?;
    let bp = avg_pool_3x3(b, &n("avg_pool"), x)?;
    let bp = basic(b, &n("branch_pool"), bp, pool_features, k(1), 1, [0, 0])?;
    b.concat(name, &[b1, b5, b3, bp])
}

fn inception_b(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b3 = basic(b, &n("branch3x3"), x, 384, k(3), 2, [0, 0])?;
    let bd = basic(b, &n("branch3x3dbl_1"), x, 64, k(1), 1, [0, 0])?;
    let bd = basic(b, &n("branch3x3dbl_2"), bd, 96, k(3), 1, [1, 1])?;
    let bd = basic(b, &n("branch3x3dbl_3"), bd, 96, k(3), 2, [0, 0])?;
    let bp = b.max_pool(&n("max_pool"), x, MaxPool2d::new([3, 3], [2, 2]))?;
    b.concat(name, &[b3, bd, bp])
}

fn inception_c(b: &mut GraphBuilder, name: &str, x: NodeId, c7: usize) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let (row, col) = ([1, 7], [7, 1]);
    let (pad_row, pad_col) = ([0, 3], [3, 0]);
    let b1 = basic(b, &n("branch1x1"), x, 192, k(1), 1, [0, 0])?;
    let b7 = basic(b, &n("branch7x7_1"), x, c7, k(1), 1, [0, 0])?;
    let b7 = basic(b, &n("branch7x7_2"), b7, c7, row, 1, pad_row)?;
    let b7 = basic(b, &n("branch7x7_3"), b7, 192, col, 1, pad_col)?;
    let bd = basic(b, &n("branch7x7dbl_1"), x, c7, k(1), 1, [0, 0])?;
    let bd = basic(b, &n("branch7x7dbl_2"), bd, c7, col, 1, pad_col)?;
    let bd = basic(b, &n("branch7x7dbl_3"), bd, c7, row, 1, pad_row)?;
    let bd = basic(b, &n("branch7x7dbl_4"), bd, c7, col, 1, pad_col)?;
    let bd = basic(b, &n("branch7x7dbl_5"), bd, 192, row, 1, pad_row)?;
    let bp = avg_pool_3x3(b, &n("avg_pool"), x)?;
    let bp = basic(b, &n("branch_pool"), bp, 192, k(1), 1, [0, 0])?;
    b.concat(name, &[b1, b7, bd, bp])
}

fn inception_d(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b3 = basic(b, &n("branch3x3_1"), x, 192, k(1), 1, [0, 0])?;
    let b3 = basic(b, &n("branch3x3_2"), b3, 320, k(3), 2, [0, 0])?;
    let b7 = basic(b, &n("branch7x7x3_1"), x, 192, k(1), 1, [0, 0])?;
    let b7 = basic(b, &n("branch7x7x3_2"), b7, 192, [1, 7], 1, [0, 3])?;
    let b7 = basic(b, &n("branch7x7x3_3"), b7, 192, [7, 1], 1, [3, 0])?;
    let b7 = basic(b, &n("branch7x7x3_4"), b7, 192, k(3), 2, [0, 0])?;
    let bp = b.max_pool(&n("max_pool"), x, MaxPool2d::new([3, 3], [2, 2]))?;
    b.concat(name, &[b3, b7, bp])
}

fn inception_e(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let n = |s: &str| format!("{name}.{s}");
    let b1 = basic(b, &n("branch1x1"), x, 320, k(1), 1, [0, 0])?;
    let b3 = basic(b, &n("branch3x3_1"), x, 384, k(1), 1, [0, 0])?;
    let b3a = basic(b, &n("branch3x3_2a"), b3, 384, [1, 3], 1, [0, 1])?;
    let b3b = basic(b, &n("branch3x3_2b"), b3, 384, [3, 1], 1, [1, 0])?;
    let b3 = b.concat(&n("branch3x3"), &[b3a, b3b])?;
    let bd = basic(b, &n("branch3x3dbl_1"), x, 448, k(1), 1, [0, 0])?;
    let bd = basic(b, &n("branch3x3dbl_2"), bd, 384, k(3), 1, [1, 1])?;
    let bda = basic(b, &n("branch3x3dbl_3a"), bd, 384, [1, 3], 1, [0, 1])?;
    let bdb = basic(b, &n("branch3x3dbl_3b"), bd, 384, [3, 1], 1, [1, 0])?;
    let bd = b.concat(&n("branch3x3dbl"), &[bda, bdb])?;
    let bp = avg_pool_3x3(b, &n("avg_pool"), x)?;
    let bp = basic(b, &n("branch_pool"), bp, 192, k(1), 1, [0, 0])?;
    b.concat(name, &[b1, b3, bd, bp])
}

/// `InceptionAux`: 5×5/3 average pool, 1×1 to 128, 5×5 to 768, global average pool, linear.
fn aux_head(b: &mut GraphBuilder, x: NodeId, classes: usize) -> Result<NodeId> {
    let y = b.avg_pool("AuxLogits.avg_pool", x, AvgPool2d::new([5, 5], [3, 3]))?;
    let y = basic(b, "AuxLogits.conv0", y, 128, k(1), 1, [0, 0])?;
    let y = basic(b, "AuxLogits.conv1", y, 768, k(5), 1, [0, 0])?;
    let y = b.global_avg_pool("AuxLogits.global_pool", y)?;
    b.linear("AuxLogits.fc", y, classes, true)
}

/// Builds inception-v3 for `config` (torchvision: 3×299×299, 1000 classes; the default here is 10).
pub fn inception_v3(config: ModelConfig) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let [h, w] = config.size;
    let x = b.input("input", [config.in_channels, h, w])?;
    let x = basic(&mut b, "Conv2d_1a_3x3", x, 32, k(3), 2, [0, 0])?;
    let x = basic(&mut b, "Conv2d_2a_3x3", x, 32, k(3), 1, [0, 0])?;
    let x = basic(&mut b, "Conv2d_2b_3x3", x, 64, k(3), 1, [1, 1])?;
    let x = b.max_pool("maxpool1", x, MaxPool2d::new([3, 3], [2, 2]))?;
    let x = basic(&mut b, "Conv2d_3b_1x1", x, 80, k(1), 1, [0, 0])?;
    let x = basic(&mut b, "Conv2d_4a_3x3", x, 192, k(3), 1, [0, 0])?;
    let x = b.max_pool("maxpool2", x, MaxPool2d::new([3, 3], [2, 2]))?;
    b.mark("stem", x);
    let x = inception_a(&mut b, "Mixed_5b", x, 32)?;
    let x = inception_a(&mut b, "Mixed_5c", x, 64)?;
    let x = inception_a(&mut b, "Mixed_5d", x, 64)?;
    b.mark("Mixed_5d", x);
    let x = inception_b(&mut b, "Mixed_6a", x)?;
    let x = inception_c(&mut b, "Mixed_6b", x, 128)?;
    let x = inception_c(&mut b, "Mixed_6c", x, 160)?;
    let x = inception_c(&mut b, "Mixed_6d", x, 160)?;
    let x = inception_c(&mut b, "Mixed_6e", x, 192)?;
    b.mark("Mixed_6e", x);
    // The auxiliary head's 5×5 convolution needs a 5×5 map after its 5×5/3 pool: a 17×17 stage.
    if config.aux_heads && b.shape_of(x)?[1] >= 17 {
        let aux = aux_head(&mut b, x, config.classes)?;
        b.aux_output(aux, AUX_WEIGHT)?;
    }
    let x = inception_d(&mut b, "Mixed_7a", x)?;
    let x = inception_e(&mut b, "Mixed_7b", x)?;
    let x = inception_e(&mut b, "Mixed_7c", x)?;
    b.mark("Mixed_7c", x);
    let x = b.global_avg_pool("avgpool", x)?;
    let x = b.dropout("dropout", x, DROPOUT)?;
    let x = b.flatten("flatten", x)?;
    let x = b.linear("fc", x, config.classes, true)?;
    b.mark("fc", x);
    b.build(x)
}
