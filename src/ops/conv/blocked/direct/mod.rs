//! Direct convolution on the blocked layout (`crate::blocked`) with incept's microkernel: no im2col copy.
//! Each output tile (up to 4 blocks of 16 output channels × up to 8 pixels of one output row) is one
//! microkernel call whose runs walk every (input-channel block, kernel tap) pair over the input in
//! place, 16 input channels per run.
//!
//! Weights are packed once into the kernel's layout ([`PackedConv`]): per output block, for each
//! (input block, tap), 16 input channels × 16 output channels; channels past the real counts are zero.
//! The input is a blocked image with a zero halo as wide as the convolution's padding, so border tiles
//! need no special case.
//!
//! The input gradient of a stride-1 convolution is the same direct convolution over the output gradient,
//! with the weights flipped and transposed ([`PackedConv::input_grad`]).
//!
//! [`ConvAlgo::Direct`](crate::ops::conv::ConvAlgo::Direct) runs these kernels on NCHW activations: each image is
//! reordered into the blocked layout in the caller's workspace, convolved, and reordered back
//! ([`forward_images`], [`add_input_grad_images`], [`add_weight_grad_images`]), with the weights packed
//! once in a [`DirectWeights`] the executor refreshes after every weight update. A reorder reads and
//! writes each value once; the convolution does `k·k·out` multiply-adds per input value.
//!
//! The passes are in rooms of their own: `forward.rs`, `input_grad.rs`, `weight_grad.rs`, sharing the
//! geometry and packing of `packing.rs`.

mod forward;
mod input_grad;
mod packing;
mod weight_grad;
mod weight_grad_bf16;

pub use forward::{forward_blocked, forward_images};
pub use input_grad::{add_input_grad_images, add_input_grad_via_im2col};
pub use packing::{PackedConv, direct_input_grad, few_channels, halo};
pub(in crate::ops::conv) use packing::{fill_blocks, group_blocks, pack_bias, weight_grad_chunk, workspace};
pub use weight_grad::{add_weight_grad_images, bias_grad_blocked, relu_mask_and_bias_grad_blocked};

use crate::blocked::Layout;
use crate::microkernel::Bf16Isa;
use crate::ops::conv::ConvGeometry;
use crate::ops::conv::direct_stem::{self, StemWeights};

/// A convolution's weights packed once for [`ConvAlgo::Direct`](crate::ops::conv::ConvAlgo::Direct): on the
/// blocked layout, for the forward pass and the weight gradient, and flipped and transposed for the
/// input gradient of a stride-1 convolution (`None` otherwise: that input gradient goes through
/// im2col + GEMM); or, for an input of fewer than 16 channels, in the few-channel layout of
/// `direct_stem.rs` (whose input gradient also goes through im2col).
#[derive(Debug, Clone)]
pub struct DirectWeights(Packed);

#[derive(Debug, Clone)]
enum Packed {
    Blocked {
        forward: Box<PackedConv>,
        input_grad: Option<Box<PackedConv>>,
    },
    FewChannels(Box<StemWeights>),
}

/// Which kernels a [`DirectWeights`] runs: the blocked layout's, or the few-channel ones.
enum Kernels<'a> {
    Blocked(&'a PackedConv),
    FewChannels(&'a StemWeights),
}

impl DirectWeights {
    /// Packs `w` (`[out, in, kh, kw]`) and `b` for `g` (whose batch size does not matter).
    pub fn new(g: &ConvGeometry, w: &[f32], b: Option<&[f32]>) -> DirectWeights {
        DirectWeights::with_precision(g, w, b, None)
    }

    /// [`DirectWeights::new`] for the bf16 microkernel's `isa` (`None`: float32): the forward pass and
    /// the input gradient then read bf16 weights and bf16 inputs and sum in float32, and the weight
    /// gradient sums products of bf16-rounded inputs and output gradients in float32. A few-channel
    /// first layer stays float32 (`direct_stem.rs` reads NCHW float32 images).
    pub fn with_precision(g: &ConvGeometry, w: &[f32], b: Option<&[f32]>, bf16: Option<Bf16Isa>) -> DirectWeights {
        DirectWeights(if direct_stem::eligible(g) {
            Packed::FewChannels(Box::new(StemWeights::new(g, w, b)))
        } else {
            Packed::Blocked {
                forward: Box::new(PackedConv::with_precision(g, w, b, bf16)),
                input_grad: PackedConv::input_grad_with_precision(g, w, bf16).map(Box::new),
            }
        })
    }

    /// The bf16 build these weights run on, `None` for float32 (and for a few-channel first layer).
    pub fn bf16_isa(&self) -> Option<Bf16Isa> {
        match &self.0 {
            Packed::Blocked { forward, .. } => forward.bf16_isa(),
            Packed::FewChannels(_) => None,
        }
    }

    /// Zero weights in `g`'s layout: enough for a weight gradient, which does not read them.
    pub fn layout(g: &ConvGeometry) -> DirectWeights {
        if direct_stem::eligible(g) {
            let zeros = vec![0.0; g.out_channels * g.in_channels * g.h.kernel * g.w.kernel];
            return DirectWeights(Packed::FewChannels(Box::new(StemWeights::new(g, &zeros, None))));
        }
        DirectWeights(Packed::Blocked {
            forward: Box::new(PackedConv::zeros(g)),
            input_grad: None,
        })
    }

    /// The kernels these weights run, for an input in `x_layout` (the few-channel ones read NCHW).
    fn kernels(&self, x_layout: Layout) -> Kernels<'_> {
        match &self.0 {
            Packed::Blocked { forward, .. } => Kernels::Blocked(forward),
            Packed::FewChannels(stem) => {
                assert_eq!(x_layout, Layout::Nchw, "the few-channel path reads NCHW");
                Kernels::FewChannels(stem)
            }
        }
    }

    /// Packs new values of the same weights into the existing buffers (no allocation).
    pub fn repack(&mut self, w: &[f32], b: Option<&[f32]>) {
        match &mut self.0 {
            Packed::Blocked { forward, input_grad } => {
                forward.repack(w, b);
                if let Some(back) = input_grad {
                    back.repack_flipped(w);
                }
            }
            Packed::FewChannels(stem) => stem.repack(w, b),
        }
    }

    /// Whether the input gradient runs on the microkernel (stride 1) rather than through im2col + GEMM.
    pub fn has_direct_input_grad(&self) -> bool {
        matches!(
            self.0,
            Packed::Blocked {
                input_grad: Some(_),
                ..
            }
        )
    }
}
