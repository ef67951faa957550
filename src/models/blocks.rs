//! Building blocks the model files share.

use crate::error::Result;
use crate::geometry::Padding;
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::ops::conv::Conv2d;

/// The chapter's models' ending: `x` flattened (node `flatten`), a linear classifier (`linear`), both
/// marked for summaries, and the graph built with the classifier as its output.
pub(super) fn flatten_linear_head(
    mut b: GraphBuilder,
    [flatten, linear]: [&str; 2],
    x: NodeId,
    classes: usize,
) -> Result<Graph> {
    let x = b.flatten(flatten, x)?;
    b.mark("flatten", x);
    let x = b.linear(linear, x, classes, true)?;
    b.mark("linear", x);
    b.build(x)
}

/// A convolution (node and parameters `conv`) followed by batch norm with a fused ReLU (`bn`), eps 1e-3.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_bn_relu(
    b: &mut GraphBuilder,
    [conv, bn]: [&str; 2],
    x: NodeId,
    out: usize,
    kernel: [usize; 2],
    stride: usize,
    pad: [usize; 2],
    bias: bool,
) -> Result<NodeId> {
    let in_c = b.shape_of(x)?[0];
    let geometry = Conv2d::new(in_c, out, kernel)
        .with_stride([stride, stride])
        .with_padding(Padding::symmetric(pad[0], pad[1]));
    let y = b.conv(conv, x, geometry, bias, false)?;
    b.batch_norm(bn, y, 1e-3, true)
}

/// torchvision's `BasicConv2d` and timm's `ConvNormAct`: `{name}.conv` without bias, then `{name}.bn`.
pub(super) fn basic_conv(
    b: &mut GraphBuilder,
    name: &str,
    x: NodeId,
    out: usize,
    kernel: [usize; 2],
    stride: usize,
    pad: [usize; 2],
) -> Result<NodeId> {
    let (conv, bn) = (format!("{name}.conv"), format!("{name}.bn"));
    conv_bn_relu(b, [&conv, &bn], x, out, kernel, stride, pad, false)
}
