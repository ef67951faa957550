//! 2-D convolution (NCHW activations, `[out, in, kh, kw]` weights as PyTorch stores them): geometry, the
//! choice of algorithm, and the ndarray-facing API. Each algorithm lives in its own file:
//!
//! Two groups: `blocked/`, the production path the plan picks (the blocked layout and incept's
//! microkernel), and `nchw/`, the reference and NCHW paths behind the ndarray API and `--conv-algo`.
//!
//! | algorithm | file | when |
//! | --- | --- | --- |
//! | [`ConvAlgo::Direct`] | `blocked/direct/` (and `blocked/direct_stem.rs` for 1-15 input channels) | any geometry: incept's microkernel on the blocked layout; the plan's choice |
//! | Winograd on the blocked layout | `blocked/winograd_blocked.rs` | 3×3, stride 1, where the plan finds F(2,3) or F(4,3) faster than direct |
//! | [`ConvAlgo::Naive`] | `nchw/naive.rs` | the f64 reference every other path is tested against |
//! | [`ConvAlgo::Gemm1x1`] | `nchw/gemm_conv.rs` | 1×1, stride 1, no padding: the input already is the GEMM operand |
//! | [`ConvAlgo::Winograd`] | `nchw/winograd.rs` | 3×3, stride 1, NCHW: F(4×4, 3×3), forward and input gradient |
//! | [`ConvAlgo::Factorized`] | `nchw/factorized.rs` | 1×k and k×1, stride 1: one GEMM per tap on a padded copy |
//! | [`ConvAlgo::Im2colGemm`] | `nchw/im2col.rs` + `nchw/gemm_conv.rs` | everything else |
//!
//! The weight gradient of an NCHW Winograd layer is computed by im2col + GEMM. `nchw/batching.rs` holds how
//! the GEMM-based algorithms split a batch into chunks and threads; `winograd_math.rs` the transforms both
//! Winograd paths share.

mod blocked;
mod nchw;
mod winograd_math;

use blocked::direct_stem;
pub use blocked::{direct, winograd_blocked};
use nchw::{batching, factorized, gemm_conv, im2col, naive, winograd};

use ndarray::{Array4, ArrayView1, ArrayView4, ArrayViewMut1, ArrayViewMut4};

use crate::blocked::Layout;
use crate::error::{Error, Result, expect_shape};
use crate::geometry::{Axis, Padding};
use crate::microkernel::Isa;
use crate::tensor::{Images, ImagesMut, contiguous, dims4, with_contiguous_mut};
use crate::workspace::{Workspace, WorkspaceSize};

/// How a convolution is computed. `Auto` lets [`choose_algo`] decide; any other value forces that
/// algorithm (tests and benches do), and an algorithm that cannot run the geometry is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvAlgo {
    /// Pick the fastest eligible algorithm.
    #[default]
    Auto,
    /// Plain loops accumulating in f64: the reference.
    Naive,
    /// 1×1, stride 1, unpadded: one GEMM per image on the input as it lies.
    Gemm1x1,
    /// Lower each image to its im2col matrix, then one GEMM.
    Im2colGemm,
    /// Winograd F(4×4, 3×3): 3×3 kernels, stride 1, no dilation, padding at most 2.
    Winograd,
    /// `1×k` or `k×1` (k > 1), stride 1, no dilation: one GEMM per tap on a padded copy of the input.
    Factorized,
    /// incept's microkernel on the blocked channel layout, every image reordered in and out; weights
    /// packed once by the executor ([`direct::DirectWeights`]). The input gradient of a strided
    /// convolution goes through im2col + GEMM.
    Direct,
}

impl ConvAlgo {
    /// Whether this algorithm can compute geometry `g` (`Auto` always can).
    pub fn supports(self, g: &ConvGeometry) -> bool {
        match self {
            ConvAlgo::Gemm1x1 => g.is_pointwise(),
            ConvAlgo::Winograd => winograd::eligible(g),
            ConvAlgo::Factorized => factorized::eligible(g),
            ConvAlgo::Auto | ConvAlgo::Naive | ConvAlgo::Im2colGemm | ConvAlgo::Direct => true,
        }
    }
}

/// The one place where an algorithm is chosen for a geometry.
pub fn choose_algo(requested: ConvAlgo, g: &ConvGeometry) -> Result<ConvAlgo> {
    match requested {
        ConvAlgo::Auto if g.is_pointwise() => Ok(ConvAlgo::Gemm1x1),
        // Winograd is not chosen automatically yet: on googlenet-d2l's 3×3 layers at batch 128
        // (`cargo bench --bench conv_algorithms -- 3x3/1`) it ties with im2col + GEMM on 24×24 and 12×12 maps
        // (within run-to-run noise) and is 1.5-3× slower on 6×6 and 3×3 maps — its 36 narrow GEMMs
        // (K = input channels) and its transforms, which miss cache, cost what the 4× fewer
        // multiplies save. It stays available to force.
        // 1×7 / 7×1: one GEMM per tap on a padded copy beats lowering to a 7×-inflated im2col matrix on
        // inception-v3's 17×17 layers (`cargo bench --bench conv_algorithms -- inception-v3`, batch 32: forward
        // 123 vs 114 and 136 vs 130 GFLOP/s, backward 115 vs 95 and 132 vs 121). With 3 taps
        // (1×3 / 3×1 on 8×8 maps) im2col's one wide GEMM wins (137 vs 104, 148 vs 141 forward).
        ConvAlgo::Auto if factorized::eligible(g) && g.h.kernel.max(g.w.kernel) >= 5 => Ok(ConvAlgo::Factorized),
        // Direct is not chosen here, where the layout around the layer is unknown: with a reorder into
        // and out of the blocked layout around every call it loses on googlenet-d2l (`incept bench
        // --mode train --conv-algo direct --profile` against the GEMM paths, batch 128, one run: 1×1
        // layers forward 0.45-0.8×, 3×3 0.9-1.08×; only 5×5 won). The plan promotes a layer to Direct
        // where its output can stay blocked (`graph::plan`).
        ConvAlgo::Auto => Ok(ConvAlgo::Im2colGemm),
        ConvAlgo::Gemm1x1 if !g.is_pointwise() => Err(Error::config(
            "conv2d",
            format!("Gemm1x1 needs a 1x1 kernel, stride 1 and no padding, found {g}"),
        )),
        ConvAlgo::Winograd if !winograd::eligible(g) => Err(Error::config(
            "conv2d",
            format!("Winograd needs a 3x3 kernel, stride 1, no dilation and padding of at most 2, found {g}"),
        )),
        ConvAlgo::Factorized if !factorized::eligible(g) => Err(Error::config(
            "conv2d",
            format!("Factorized needs a 1xk or kx1 kernel (k > 1), stride 1 and no dilation, found {g}"),
        )),
        algo => Ok(algo),
    }
}

/// A convolution's shape and geometry, with no parameters: the weight `[out, in, kh, kw]` and the optional
/// bias `[out]` are passed to each call, so the caller owns them (and their gradients).
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Dilation `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Padding rule.
    pub padding: Padding,
    /// Algorithm request.
    pub algo: ConvAlgo,
}

impl Conv2d {
    /// A stride-1, unpadded, undilated convolution.
    pub fn new(in_channels: usize, out_channels: usize, kernel: [usize; 2]) -> Self {
        Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride: [1, 1],
            dilation: [1, 1],
            padding: Padding::Valid,
            algo: ConvAlgo::Auto,
        }
    }

    /// Sets the stride.
    pub fn with_stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the padding.
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Sets the dilation.
    pub fn with_dilation(mut self, dilation: [usize; 2]) -> Self {
        self.dilation = dilation;
        self
    }

    /// Forces an algorithm.
    pub fn with_algo(mut self, algo: ConvAlgo) -> Self {
        self.algo = algo;
        self
    }

    /// The weight's shape, `[out, in, kh, kw]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.out_channels, self.in_channels, self.kernel[0], self.kernel[1]]
    }

    /// Resolves the geometry for an input of shape `[n, c, h, w]`, checking channels and sizes.
    pub fn geometry(&self, input: [usize; 4]) -> Result<ConvGeometry> {
        let [batch, channels, h, w] = input;
        if channels != self.in_channels {
            return Err(Error::shape(
                "conv2d input",
                format!("[n, {}, h, w]", self.in_channels),
                format!("{input:?}"),
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err(Error::config("conv2d", "channel counts must be at least 1"));
        }
        let p = self.padding.resolve([h, w], self.kernel, self.stride, self.dilation);
        let op = "conv2d";
        Ok(ConvGeometry {
            batch,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            h: Axis::new(
                op,
                h,
                self.kernel[0],
                self.stride[0],
                self.dilation[0],
                (p.top, p.bottom),
                false,
            )?,
            w: Axis::new(
                op,
                w,
                self.kernel[1],
                self.stride[1],
                self.dilation[1],
                (p.left, p.right),
                false,
            )?,
        })
    }

    /// The output shape for an input of shape `input`.
    pub fn output_shape(&self, input: [usize; 4]) -> Result<[usize; 4]> {
        Ok(self.geometry(input)?.output_shape())
    }

    /// `y = conv(x, w) + b`.
    pub fn forward(&self, x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>) -> Result<Array4<f32>> {
        let g = self.geometry(dims4(&x))?;
        self.check_params(&w, b.as_ref())?;
        let algo = choose_algo(self.algo, &g)?;
        let (x, w) = (contiguous(&x), contiguous(&w));
        let b = b.map(|b| b.to_vec());
        let mut y = Array4::zeros(g.output_shape());
        let y_slice = y.as_slice_mut().expect("fresh arrays are contiguous");
        let mut y_images = ImagesMut::dense(y_slice, g.batch, g.output_image_len());
        forward_images(
            &g,
            algo,
            Images::dense(&x, g.batch, g.input_image_len()),
            &w,
            b.as_deref(),
            &mut y_images,
            &mut Workspace::default(),
        );
        Ok(y)
    }

    /// The input gradient `dx` for an input of shape `input_shape`, given the output gradient `dy`.
    pub fn backward_input(
        &self,
        w: ArrayView4<f32>,
        dy: ArrayView4<f32>,
        input_shape: [usize; 4],
    ) -> Result<Array4<f32>> {
        let g = self.geometry(input_shape)?;
        self.check_params(&w, None)?;
        expect_shape("conv2d output gradient", &g.output_shape(), dy.shape())?;
        let algo = choose_algo(self.algo, &g)?;
        let mut dx = Array4::zeros(input_shape);
        let dx_slice = dx.as_slice_mut().expect("fresh arrays are contiguous");
        let mut dx_images = ImagesMut::dense(dx_slice, g.batch, g.input_image_len());
        let dy = contiguous(&dy);
        backward_input_images(
            &g,
            algo,
            &contiguous(&w),
            Images::dense(&dy, g.batch, g.output_image_len()),
            &mut dx_images,
            &mut Workspace::default(),
        );
        Ok(dx)
    }

    /// Adds the weight gradient to `dw` (shape `[out, in, kh, kw]`).
    pub fn backward_weight(&self, x: ArrayView4<f32>, dy: ArrayView4<f32>, dw: ArrayViewMut4<f32>) -> Result<()> {
        let g = self.geometry(dims4(&x))?;
        expect_shape("conv2d output gradient", &g.output_shape(), dy.shape())?;
        expect_shape("conv2d weight gradient", &self.weight_shape(), dw.shape())?;
        let algo = choose_algo(self.algo, &g)?;
        let (x, dy) = (contiguous(&x), contiguous(&dy));
        let (x, dy) = (
            Images::dense(&x, g.batch, g.input_image_len()),
            Images::dense(&dy, g.batch, g.output_image_len()),
        );
        with_contiguous_mut(dw, |dw| {
            backward_weight_images(&g, algo, x, dy, dw, &mut Workspace::default())
        });
        Ok(())
    }

    /// Adds the bias gradient (the sum of `dy` over batch and space) to `db` (shape `[out]`).
    pub fn backward_bias(&self, dy: ArrayView4<f32>, db: ArrayViewMut1<f32>) -> Result<()> {
        if dy.shape()[1] != self.out_channels {
            return Err(Error::shape(
                "conv2d output gradient",
                format!("[n, {}, h, w]", self.out_channels),
                format!("{:?}", dy.shape()),
            ));
        }
        expect_shape("conv2d bias gradient", &[self.out_channels], db.shape())?;
        let [n, c, h, w] = dims4(&dy);
        let dy = contiguous(&dy);
        with_contiguous_mut(db, |db| bias_grad(Images::dense(&dy, n, c * h * w), c, h * w, db));
        Ok(())
    }

    fn check_params(&self, w: &ArrayView4<f32>, b: Option<&ArrayView1<f32>>) -> Result<()> {
        expect_shape("conv2d weight", &self.weight_shape(), w.shape())?;
        if let Some(b) = b {
            expect_shape("conv2d bias", &[self.out_channels], b.shape())?;
        }
        Ok(())
    }
}

/// A convolution resolved for one input shape: everything the kernels need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// The vertical axis.
    pub h: Axis,
    /// The horizontal axis.
    pub w: Axis,
}

impl ConvGeometry {
    /// `[n, out, oh, ow]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.out_channels, self.h.output, self.w.output]
    }

    /// `[n, in, h, w]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.in_channels, self.h.input, self.w.input]
    }

    /// Elements of one input image.
    pub fn input_image_len(&self) -> usize {
        self.in_channels * self.h.input * self.w.input
    }

    /// Elements of one output image.
    pub fn output_image_len(&self) -> usize {
        self.out_channels * self.output_pixels()
    }

    /// Output pixels per channel.
    pub fn output_pixels(&self) -> usize {
        self.h.output * self.w.output
    }

    /// The GEMM inner dimension: `in * kh * kw`.
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.h.kernel * self.w.kernel
    }

    /// Multiply-adds times two for the forward pass: the FLOP count benches report.
    pub fn forward_flops(&self) -> u64 {
        2 * (self.batch * self.output_image_len() * self.patch_len()) as u64
    }

    /// The convolution that computes this one's input gradient: over the output gradient (as its input),
    /// with the in and out channels swapped, the same kernel (to be flipped) and `(K - 1)·dilation - pad`
    /// of padding per side. `None` for a stride above 1 or more padding than the kernel reaches: those
    /// need a transposed convolution.
    pub fn input_grad_geometry(&self) -> Option<ConvGeometry> {
        let mirror = |a: &Axis| {
            let reach = (a.kernel - 1) * a.dilation;
            (a.stride == 1 && a.pad_lo <= reach && a.pad_hi <= reach).then_some(Axis {
                input: a.output,
                pad_lo: reach - a.pad_lo,
                pad_hi: reach - a.pad_hi,
                output: a.input,
                ..*a
            })
        };
        Some(ConvGeometry {
            batch: self.batch,
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            h: mirror(&self.h)?,
            w: mirror(&self.w)?,
        })
    }

    /// 1×1, stride 1, unpadded: the input image is already the GEMM operand.
    pub fn is_pointwise(&self) -> bool {
        let unit = |a: &Axis| a.kernel == 1 && a.stride == 1 && a.pad_lo == 0 && a.pad_hi == 0;
        unit(&self.h) && unit(&self.w)
    }
}

impl std::fmt::Display for ConvGeometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (h, w) = (&self.h, &self.w);
        write!(
            f,
            "input {:?} -> output {:?}, kernel {}x{}, stride {}x{}, dilation {}x{}, pads top {} bottom {} left {} right {}",
            self.input_shape(),
            self.output_shape(),
            h.kernel,
            w.kernel,
            h.stride,
            w.stride,
            h.dilation,
            w.dilation,
            h.pad_lo,
            h.pad_hi,
            w.pad_lo,
            w.pad_hi
        )
    }
}

/// Forward on a batch of NCHW images with a resolved algorithm; `y` is overwritten. Scratch comes from
/// `ws` (grown if [`workspace`] was not reserved in it).
pub fn forward_images(
    g: &ConvGeometry,
    algo: ConvAlgo,
    x: Images<'_>,
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut ImagesMut<'_>,
    ws: &mut Workspace,
) {
    forward_images_fused(g, algo, x, w, Fused { bias: b, relu: false }, y, ws);
}

/// What a convolution applies to its output in the same pass that writes it (while it is in cache):
/// a bias per output channel, then a ReLU.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fused<'a> {
    /// One value per output channel, added to every pixel.
    pub bias: Option<&'a [f32]>,
    /// `y = max(y, 0)` after the bias.
    pub relu: bool,
}

/// One forward pass's operands, as each algorithm takes them: the input images, the weights in PyTorch's
/// layout, and what is fused into the output pass.
#[derive(Clone, Copy)]
pub(crate) struct Operands<'a> {
    x: Images<'a>,
    w: &'a [f32],
    fused: Fused<'a>,
}

/// One input-gradient pass's operands, as each algorithm takes them: the weights in PyTorch's layout and
/// the output gradient.
#[derive(Clone, Copy)]
pub(crate) struct GradOperands<'a> {
    w: &'a [f32],
    dy: Images<'a>,
}

/// [`forward_images`], with the bias and ReLU of `fused` applied in the output pass.
pub fn forward_images_fused(
    g: &ConvGeometry,
    algo: ConvAlgo,
    x: Images<'_>,
    w: &[f32],
    fused: Fused<'_>,
    y: &mut ImagesMut<'_>,
    ws: &mut Workspace,
) {
    debug_assert_eq!((x.len(), y.len()), (g.input_image_len(), g.output_image_len()));
    match algo {
        ConvAlgo::Naive => {
            naive::forward(g, x, w, fused.bias, y);
            if fused.relu {
                y.iter_mut()
                    .for_each(|(_, img)| img.iter_mut().for_each(|v| *v = v.max(0.0)));
            }
        }
        ConvAlgo::Winograd => winograd::forward(g, Operands { x, w, fused }, y, ws),
        ConvAlgo::Factorized => factorized::forward(g, Operands { x, w, fused }, y, ws),
        // Packed per call here; the executor packs once and calls `direct` itself.
        ConvAlgo::Direct => {
            let packed = direct::DirectWeights::new(g, w, fused.bias);
            direct::forward_images(&packed, x, Layout::Nchw, fused.relu, y, Layout::Nchw, ws, Isa::best());
        }
        _ => gemm_conv::forward(g, lowering(g, algo), Operands { x, w, fused }, y, ws),
    }
}

/// Adds the input gradient into `dx`.
pub fn backward_input_images(
    g: &ConvGeometry,
    algo: ConvAlgo,
    w: &[f32],
    dy: Images<'_>,
    dx: &mut ImagesMut<'_>,
    ws: &mut Workspace,
) {
    match algo {
        ConvAlgo::Naive => naive::backward_input(g, w, dy, dx),
        ConvAlgo::Winograd => winograd::backward_input(g, GradOperands { w, dy }, dx, ws),
        ConvAlgo::Factorized => factorized::backward_input(g, GradOperands { w, dy }, dx, ws),
        ConvAlgo::Direct if direct::direct_input_grad(g) => {
            let packed = direct::DirectWeights::new(g, w, None);
            direct::add_input_grad_images(&packed, dy, Layout::Nchw, dx, Layout::Nchw, ws, Isa::best());
        }
        _ => gemm_conv::backward_input(g, lowering(g, algo), GradOperands { w, dy }, dx, ws),
    }
}

/// Adds the weight gradient into `dw`.
pub fn backward_weight_images(
    g: &ConvGeometry,
    algo: ConvAlgo,
    x: Images<'_>,
    dy: Images<'_>,
    dw: &mut [f32],
    ws: &mut Workspace,
) {
    match algo {
        ConvAlgo::Naive => naive::backward_weight(g, x, dy, dw),
        ConvAlgo::Factorized => factorized::backward_weight(g, x, dy, dw, ws),
        ConvAlgo::Direct => {
            let packed = direct::DirectWeights::layout(g);
            direct::add_weight_grad_images(&packed, x, Layout::Nchw, dy, Layout::Nchw, dw, ws, Isa::best());
        }
        _ => lowering(g, algo).backward_weight(g, x, dy, dw, ws),
    }
}

/// The workspace any pass of `algo` over `g` (a resolved algorithm, at the batch the caller plans for)
/// takes, so an executor can reserve it up front and a training step never grows it.
pub fn workspace(g: &ConvGeometry, algo: ConvAlgo) -> WorkspaceSize {
    match algo {
        ConvAlgo::Naive => WorkspaceSize::default(),
        // The weight gradient of a Winograd layer goes through im2col.
        ConvAlgo::Winograd => winograd::workspace(g).max(gemm_conv::Lowering::Im2col.workspace(g)),
        ConvAlgo::Factorized => factorized::workspace(g),
        ConvAlgo::Direct if direct::direct_input_grad(g) => direct::workspace(g),
        ConvAlgo::Direct => direct::workspace(g).max(gemm_conv::Lowering::Im2col.workspace(g)),
        _ => lowering(g, algo).workspace(g),
    }
}

fn lowering(g: &ConvGeometry, algo: ConvAlgo) -> gemm_conv::Lowering {
    if algo == ConvAlgo::Gemm1x1 || (algo == ConvAlgo::Auto && g.is_pointwise()) {
        gemm_conv::Lowering::Direct
    } else {
        gemm_conv::Lowering::Im2col
    }
}

/// `db[c] += sum over images and pixels of dy[c, pixel]`, shared by every algorithm (and by linear
/// layers, with one pixel). Channels are summed in parallel, each in f64 and in image order, so the
/// result does not depend on the thread count.
pub fn bias_grad(dy: Images<'_>, channels: usize, pixels: usize, db: &mut [f32]) {
    use rayon::prelude::*;
    let pixels = pixels.max(1);
    db[..channels].par_iter_mut().enumerate().for_each(|(c, db_c)| {
        let total: f64 = (0..dy.count())
            .map(|n| dy.get(n)[c * pixels..][..pixels].iter().map(|&v| v as f64).sum::<f64>())
            .sum();
        *db_c += total as f32;
    });
}
