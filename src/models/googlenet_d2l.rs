//! GoogLeNet exactly as the d2l chapter builds it (`googlenet_d2l` in ../shared/reference/models.py):
//! five blocks, Inception blocks of conv+ReLU without batch norm, no ReLU in block 2, global average
//! pooling and one linear layer. Node and parameter names follow the PyTorch module paths
//! (`0.0.weight`, `2.0.p1_1.weight`, ..., `6.bias`).

use super::ModelConfig;
use crate::error::Result;
use crate::geometry::Padding;
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::ops::conv::Conv2d;
use crate::ops::pool::MaxPool2d;

/// The d2l Inception block: `cat(relu(1x1), relu(3x3(relu(1x1))), relu(5x5(relu(1x1))), relu(1x1(maxpool)))`.
fn inception(
    b: &mut GraphBuilder,
    name: &str,
    x: NodeId,
    c1: usize,
    c2: (usize, usize),
    c3: (usize, usize),
    c4: usize,
) -> Result<NodeId> {
    let in_c = b.shape_of(x)?[0];
    let pad = |p| Padding::symmetric(p, p);
    let p1 = b.conv(&format!("{name}.p1_1"), x, Conv2d::new(in_c, c1, [1, 1]), true, true)?;
    let p2 = b.conv(&format!("{name}.p2_1"), x, Conv2d::new(in_c, c2.0, [1, 1]), true, true)?;
    let p2 = b.conv(
        &format!("{name}.p2_2"),
        p2,
        Conv2d::new(c2.0, c2.1, [3, 3]).with_padding(pad(1)),
        true,
        true,
    )?;
    let p3 = b.conv(&format!("{name}.p3_1"), x, Conv2d::new(in_c, c3.0, [1, 1]), true, true)?;
    let p3 = b.conv(
        &format!("{name}.p3_2"),
        p3,
        Conv2d::new(c3.0, c3.1, [5, 5]).with_padding(pad(2)),
        true,
        true,
    )?;
    let p4 = b.max_pool(
        &format!("{name}.p4_1"),
        x,
        MaxPool2d::new([3, 3], [1, 1]).with_padding(pad(1)),
    )?;
    let p4 = b.conv(&format!("{name}.p4_2"), p4, Conv2d::new(in_c, c4, [1, 1]), true, true)?;
    b.concat(name, &[p1, p2, p3, p4])
}

fn down(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    b.max_pool(
        name,
        x,
        MaxPool2d::new([3, 3], [2, 2]).with_padding(Padding::symmetric(1, 1)),
    )
}

/// Builds googlenet-d2l for `config` (the chapter uses 1×96×96 and 10 classes).
pub fn googlenet_d2l(config: ModelConfig) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let [h, w] = config.size;
    let x = b.input("input", [config.in_channels, h, w])?;
    let stem = Conv2d::new(config.in_channels, 64, [7, 7])
        .with_stride([2, 2])
        .with_padding(Padding::symmetric(3, 3));
    let x = b.conv("0.0", x, stem, true, true)?;
    let x = down(&mut b, "0.2", x)?;
    b.mark("b1", x);
    let x = b.conv("1.0", x, Conv2d::new(64, 64, [1, 1]), true, false)?;
    let x = b.conv(
        "1.1",
        x,
        Conv2d::new(64, 192, [3, 3]).with_padding(Padding::symmetric(1, 1)),
        true,
        false,
    )?;
    let x = down(&mut b, "1.2", x)?;
    b.mark("b2", x);
    let x = inception(&mut b, "2.0", x, 64, (96, 128), (16, 32), 32)?;
    let x = inception(&mut b, "2.1", x, 128, (128, 192), (32, 96), 64)?;
    let x = down(&mut b, "2.2", x)?;
    b.mark("b3", x);
    let x = inception(&mut b, "3.0", x, 192, (96, 208), (16, 48), 64)?;
    let x = inception(&mut b, "3.1", x, 160, (112, 224), (24, 64), 64)?;
    let x = inception(&mut b, "3.2", x, 128, (128, 256), (24, 64), 64)?;
    let x = inception(&mut b, "3.3", x, 112, (144, 288), (32, 64), 64)?;
    let x = inception(&mut b, "3.4", x, 256, (160, 320), (32, 128), 128)?;
    let x = down(&mut b, "3.5", x)?;
    b.mark("b4", x);
    let x = inception(&mut b, "4.0", x, 256, (160, 320), (32, 128), 128)?;
    let x = inception(&mut b, "4.1", x, 384, (192, 384), (48, 128), 128)?;
    let x = b.global_avg_pool("4.2", x)?;
    b.mark("b5", x);
    super::blocks::flatten_linear_head(b, ["5", "6"], x, config.classes)
}
