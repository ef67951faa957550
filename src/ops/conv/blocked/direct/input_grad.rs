//! The input gradient of a direct convolution: the forward pass over the output gradient with the
//! weights flipped and transposed (stride 1), or im2col + GEMM one image at a time otherwise.

use super::forward::{Output, Source, run_images};
use super::{DirectWeights, Packed};
use crate::blocked::{self, Layout};
use crate::microkernel::Isa;
use crate::ops::conv::ConvGeometry;
use crate::tensor::{Images, ImagesMut};
use crate::workspace::Workspace;

/// Adds the input gradient of output gradients `dy` (in `dy_layout`) into `dx` (in `dx_layout`), with
/// the flipped weights of a stride-1 convolution. Panics if `weights` has none
/// ([`DirectWeights::has_direct_input_grad`]).
pub fn add_input_grad_images(
    weights: &DirectWeights,
    dy: Images<'_>,
    dy_layout: Layout,
    dx: &mut ImagesMut<'_>,
    dx_layout: Layout,
    ws: &mut Workspace,
    isa: Isa,
) {
    let Packed::Blocked {
        input_grad: Some(back), ..
    } = &weights.0
    else {
        panic!("the direct input gradient needs a stride-1 convolution of at least 16 input channels");
    };
    let source = Source::of(back, dy, dy_layout);
    let out = Output {
        layout: dx_layout,
        add: true,
        relu: false,
    };
    run_images(back, source, out, dx, ws, isa);
}

/// Adds the input gradient of a convolution whose direct weights have no input-gradient packing (a
/// strided one, or a few-channel one) into `dx`, through im2col + GEMM one image at a time: each
/// image's `dy` reordered to NCHW (from `dy_layout`), its NCHW input gradient added into `dx` (in
/// `dx_layout`). With `bf16`, the weights and output gradients are rounded to bf16 first, as the
/// bf16 kernels read them, and the products summed in float32.
#[allow(clippy::too_many_arguments)]
pub fn add_input_grad_via_im2col(
    g: &ConvGeometry,
    w: &[f32],
    dy: Images<'_>,
    dy_layout: Layout,
    dx: &mut ImagesMut<'_>,
    dx_layout: Layout,
    ws: &mut Workspace,
    bf16: bool,
) {
    let rounded;
    let w = if bf16 {
        rounded = w.iter().map(|&v| crate::bf16::round(v)).collect::<Vec<f32>>();
        &rounded
    } else {
        w
    };
    let one = ConvGeometry { batch: 1, ..*g };
    let (in_len, out_len) = (g.input_image_len(), g.output_image_len());
    let (map_in, map_out) = ([g.h.input, g.w.input], [g.h.output, g.w.output]);
    let (mut dy_image, mut dx_image) = (vec![0.0; out_len], vec![0.0; in_len]);
    for n in 0..dy.count() {
        let dy_nchw: &[f32] = if dy_layout == Layout::Nchw && !bf16 {
            dy.get(n)
        } else {
            match dy_layout {
                Layout::Nchw => dy_image.copy_from_slice(dy.get(n)),
                Layout::Blocked => blocked::to_nchw(dy.get(n), g.out_channels, map_out, &mut dy_image),
            }
            if bf16 {
                crate::bf16::round_slice(&mut dy_image);
            }
            &dy_image
        };
        dx_image.fill(0.0);
        let mut dx_one = ImagesMut::dense(&mut dx_image, 1, in_len);
        let algo = crate::ops::conv::ConvAlgo::Im2colGemm;
        crate::ops::conv::backward_input_images(&one, algo, w, Images::dense(dy_nchw, 1, out_len), &mut dx_one, ws);
        let out = dx.get_mut(n);
        match dx_layout {
            Layout::Nchw => out.iter_mut().zip(&dx_image).for_each(|(o, v)| *o += v),
            Layout::Blocked => blocked::add_nchw_to_blocked(&dx_image, g.in_channels, map_in, out),
        }
    }
}
