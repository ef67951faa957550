//! The chapter's simplified TensorFlow Inception net for 32×32 CIFAR-10 (`inception_tf_cifar` in
//! ../shared/reference/models.py): blocks of 1×1, 3×3 and 5×5 convolutions with ReLU (16 channels each)
//! next to a 2×2/2 max pool padded back to the input's size with zeros, all concatenated, so each block
//! adds 48 channels. Names follow the PyTorch module paths (`0.weight`, `3.c1.weight`, ..., `10.bias`).

use super::ModelConfig;
use crate::error::Result;
use crate::geometry::{Padding, Pads};
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::ops::conv::Conv2d;
use crate::ops::pool::MaxPool2d;

/// Channels of each convolution path.
const PATH: usize = 16;

/// `cat(relu(1x1), relu(3x3), relu(5x5), pad(maxpool 2x2/2))`.
fn inception(b: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let [c, h, w] = b.shape_of(x)?;
    let conv = |k: usize| Conv2d::new(c, PATH, [k, k]).with_padding(Padding::symmetric(k / 2, k / 2));
    let c1 = b.conv(&format!("{name}.c1"), x, conv(1), true, true)?;
    let c3 = b.conv(&format!("{name}.c3"), x, conv(3), true, true)?;
    let c5 = b.conv(&format!("{name}.c5"), x, conv(5), true, true)?;
    let pooled = b.max_pool(&format!("{name}.pool"), x, MaxPool2d::new([2, 2], [2, 2]))?;
    // As the reference: pad (input - pooled) / 2 on each side, which restores even sizes.
    let [_, ph, pw] = b.shape_of(pooled)?;
    let (top, left) = ((h - ph) / 2, (w - pw) / 2);
    let pads = Pads {
        top,
        bottom: top,
        left,
        right: left,
    };
    let padded = b.zero_pad(&format!("{name}.pad"), pooled, pads)?;
    b.concat(name, &[c1, c3, c5, padded])
}

/// inception-tf-cifar for `config` (3×32×32 and 10 classes in the chapter).
pub fn inception_tf_cifar(config: ModelConfig) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let [h, w] = config.size;
    let x = b.input("input", [config.in_channels, h, w])?;
    let stem = Conv2d::new(config.in_channels, 32, [3, 3]).with_padding(Padding::symmetric(1, 1));
    let x = b.conv("0", x, stem, true, true)?;
    let pool = || MaxPool2d::new([2, 2], [2, 2]);
    let x = b.max_pool("2", x, pool())?;
    b.mark("stem", x);
    let x = inception(&mut b, "3", x)?;
    let x = inception(&mut b, "4", x)?;
    let x = b.max_pool("5", x, pool())?;
    b.mark("blocks 1-2", x);
    let x = inception(&mut b, "6", x)?;
    let x = inception(&mut b, "7", x)?;
    let x = b.max_pool("8", x, pool())?;
    b.mark("blocks 3-4", x);
    super::blocks::flatten_linear_head(b, ["9", "10"], x, config.classes)
}
