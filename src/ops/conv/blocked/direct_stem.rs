//! Direct convolution of an input with few channels (under 16: a network's first layer on 1- or
//! 3-channel images) on the microkernel, without padding the channels to a block.
//!
//! The input stays NCHW, copied once per image into a zero-padded plane. A tile's runs are the (input
//! channel, kernel row) pairs, each `kw` steps long along the kernel row: a step broadcasts one input
//! value per output pixel (pixels `stride` apart) against 16 output channels of packed weights. The
//! output is blocked, or reordered to NCHW. The weight gradient uses the same kernel with the roles
//! turned: the output gradient is the vector operand, the kernel's columns are the tile's pixels, and
//! the output columns are the reduction. No input gradient: this path serves layers whose input is the
//! graph's input (the plan only picks it there; called elsewhere, the input gradient goes through
//! im2col).

use rayon::prelude::*;

use crate::blocked::{self, Halo, Layout};
use crate::geometry::Pads;
use crate::microkernel::{self, Epilogue, Isa, LANES, MAX_PIXELS, Tile, TileShape};
use crate::ops::conv::ConvGeometry;
use crate::ops::conv::direct::{fill_blocks, group_blocks, halo, pack_bias, weight_grad_chunk};
use crate::ops::shape;
use crate::parallel::{self, for_each_part};
use crate::tensor::{Images, ImagesMut};
use crate::workspace::{Workspace, WorkspaceSize};

/// Whether `g` takes this path: fewer than 16 input channels and a kernel row the weight-gradient tile
/// holds.
pub(in crate::ops::conv) fn eligible(g: &ConvGeometry) -> bool {
    g.in_channels < LANES && g.w.kernel <= MAX_PIXELS
}

/// A few-channel convolution's weights and bias in the microkernel's layout: per output block, for each
/// (input channel, tap), 16 output channels.
#[derive(Debug, Clone)]
pub struct StemWeights {
    geometry: ConvGeometry,
    block_stride: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
    /// `(weight offset, input offset)` per (input channel, kernel row), relative to the tile's first
    /// weight and first input value.
    runs: Vec<(usize, usize)>,
}

impl StemWeights {
    /// Packs PyTorch-layout weights `[out, in, kh, kw]` (and a bias) for `g`.
    pub fn new(g: &ConvGeometry, w: &[f32], b: Option<&[f32]>) -> StemWeights {
        let taps = g.h.kernel * g.w.kernel;
        let block_stride = microkernel::block_stride(g.in_channels * taps * LANES);
        let [hp, wp] = padded_map(g);
        let runs = (0..g.in_channels)
            .flat_map(|c| (0..g.h.kernel).map(move |ky| (c, ky)))
            .map(|(c, ky)| ((c * taps + ky * g.w.kernel) * LANES, (c * hp + ky * g.h.dilation) * wp))
            .collect();
        let mut packed = StemWeights {
            geometry: *g,
            block_stride,
            weights: vec![0.0; blocked::blocks(g.out_channels) * block_stride],
            bias: vec![0.0; blocked::blocks(g.out_channels) * LANES],
            runs,
        };
        packed.repack(w, b);
        packed
    }

    /// Packs new values of the same weights into the existing buffers.
    pub fn repack(&mut self, w: &[f32], b: Option<&[f32]>) {
        let g = &self.geometry;
        let (inputs, outputs, taps) = (g.in_channels, g.out_channels, g.h.kernel * g.w.kernel);
        assert_eq!(w.len(), outputs * inputs * taps, "conv weights [out, in, kh, kw]");
        // i = (c · taps + tap) · 16 + oc within output block ob.
        fill_blocks(&mut self.weights, self.block_stride, |ob, i| {
            let (oc, rest) = (i % LANES, i / LANES);
            let (tap, c) = (rest % taps, rest / taps);
            let o = ob * LANES + oc;
            (o < outputs && c < inputs).then(|| w[(o * inputs + c) * taps + tap])
        });
        pack_bias(&mut self.bias, b, outputs);
    }

    /// Values of one padded NCHW input image and of one blocked output image.
    fn image_lens(&self) -> (usize, usize) {
        let g = &self.geometry;
        let [hp, wp] = padded_map(g);
        let out = blocked::image_len(g.out_channels, [g.h.output, g.w.output], Halo::default());
        (g.in_channels * hp * wp, out)
    }

    /// Writes NCHW image `x` into `out` with the convolution's zero padding around each plane.
    fn pad_input(&self, x: &[f32], out: &mut [f32]) {
        let g = &self.geometry;
        let [top, bottom, left, right] = halo(g).0;
        let pads = Pads {
            top,
            bottom,
            left,
            right,
        };
        shape::zero_pad_image(x, [g.h.input, g.w.input], pads, 1, out);
    }

    /// `y = conv(x) + bias` (then `max(·, 0)` with `relu`) from NCHW images into `y` in `y_layout`:
    /// images in static parts across the pool when they fill it, else one at a time with the output
    /// blocks across the pool.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_images(
        &self,
        x: Images<'_>,
        relu: bool,
        y: &mut ImagesMut<'_>,
        y_layout: Layout,
        ws: &mut Workspace,
        isa: Isa,
    ) {
        let g = &self.geometry;
        let (in_len, out_len) = self.image_lens();
        let region_len = in_len + out_len;
        let mut images: Vec<&mut [f32]> = y.iter_mut().map(|(_, img)| img).collect();
        for_each_part(
            &mut images,
            1,
            ws.regions(region_len),
            region_len,
            |first, run, region, threads| {
                let (xp, yb) = region.split_at_mut(in_len);
                for (i, img) in run.iter_mut().enumerate() {
                    self.pad_input(x.get(first + i), xp);
                    match y_layout {
                        Layout::Blocked => self.forward_image(xp, img, relu, isa, threads),
                        Layout::Nchw => {
                            self.forward_image(xp, yb, relu, isa, threads);
                            blocked::to_nchw(yb, g.out_channels, [g.h.output, g.w.output], img);
                        }
                    }
                }
            },
        );
    }

    /// One padded input image into one blocked output image, groups of output blocks across the pool
    /// or in order on this thread.
    fn forward_image(&self, xp: &[f32], y_img: &mut [f32], relu: bool, isa: Isa, threads: parallel::Threads) {
        let g = &self.geometry;
        let (oh, ow) = (g.h.output, g.w.output);
        let plane = oh * ow * LANES;
        let wp = padded_map(g)[1];
        let TileShape { blocks, pixels } = isa.preferred_tile();
        let blocks = match threads {
            parallel::Threads::One => blocks,
            parallel::Threads::Pool => group_blocks(blocked::blocks(g.out_channels), blocks),
        };
        parallel::for_each_chunk_mut(y_img, blocks * plane, threads, |group, y_group| {
            let first_block = group * blocks;
            let weights = &self.weights[first_block * self.block_stride..];
            let bias = &self.bias[first_block * LANES..];
            for oy in 0..oh {
                for ox in (0..ow).step_by(pixels) {
                    let tile = Tile {
                        shape: TileShape {
                            blocks: y_group.len() / plane,
                            pixels: pixels.min(ow - ox),
                        },
                        runs: &self.runs,
                        depth: g.w.kernel,
                        w_block_stride: self.block_stride,
                        x_pixel_stride: g.w.stride,
                        x_depth_stride: g.w.dilation,
                        c_offset: (oy * ow + ox) * LANES,
                        c_block_stride: plane,
                        epilogue: Epilogue {
                            accumulate: false,
                            bias: Some(bias),
                            relu,
                        },
                    };
                    let x_tile = &xp[oy * g.h.stride * wp + ox * g.w.stride..];
                    microkernel::run(isa, &tile, weights, x_tile, y_group);
                }
            }
        });
    }

    /// Adds the weight gradient of NCHW inputs `x` and output gradients `dy` (in `dy_layout`) into `dw`
    /// (`[out, in, kh, kw]`): chunks of images copied (padded, and blocked) into `ws`, summed into a
    /// packed-layout gradient in `ws` chunk after chunk, each group of output blocks on its own task
    /// (so the result does not depend on the thread count), unpacked once at the end.
    #[allow(clippy::too_many_arguments)]
    pub fn add_weight_grad_images(
        &self,
        x: Images<'_>,
        dy: Images<'_>,
        dy_layout: Layout,
        dw: &mut [f32],
        ws: &mut Workspace,
        isa: Isa,
    ) {
        let g = &self.geometry;
        let (in_len, out_len) = self.image_lens();
        let batch = x.count();
        let chunk = weight_grad_chunk(in_len + out_len).min(batch.max(1));
        let (dw_packed, region) = ws.partials_and_regions(self.weights.len(), chunk * (in_len + out_len));
        dw_packed.fill(0.0);
        let (xp, dyb) = region[..chunk * (in_len + out_len)].split_at_mut(chunk * in_len);
        let map_out = [g.h.output, g.w.output];
        for first in (0..batch).step_by(chunk) {
            let count = chunk.min(batch - first);
            let (xp, dyb) = (&mut xp[..count * in_len], &mut dyb[..count * out_len]);
            xp.par_chunks_mut(in_len)
                .zip(dyb.par_chunks_mut(out_len))
                .enumerate()
                .for_each(|(i, (x_img, dy_img))| {
                    self.pad_input(x.get(first + i), x_img);
                    match dy_layout {
                        Layout::Nchw => {
                            blocked::from_nchw(dy.get(first + i), g.out_channels, map_out, Halo::default(), dy_img)
                        }
                        Layout::Blocked => dy_img.copy_from_slice(dy.get(first + i)),
                    }
                });
            self.accumulate_weight_grad(xp, dyb, dw_packed, isa);
        }
        // Unpack: packed (c · taps + tap) · 16 + oc of block o / 16 is w[o][c][tap].
        let (inputs, taps) = (g.in_channels, g.h.kernel * g.w.kernel);
        for (i, v) in dw.iter_mut().enumerate() {
            let (tap, rest) = (i % taps, i / taps);
            let (c, o) = (rest % inputs, rest / inputs);
            *v += dw_packed[(o / LANES) * self.block_stride + (c * taps + tap) * LANES + o % LANES];
        }
    }

    /// Adds one chunk's weight gradient into the packed-layout `dw`: tiles of up to 3 output blocks ×
    /// one kernel row (`kw` pixels), summed over every output pixel of every image in order.
    fn accumulate_weight_grad(&self, xp: &[f32], dy: &[f32], dw: &mut [f32], isa: Isa) {
        let g = &self.geometry;
        let (in_len, out_len) = self.image_lens();
        let count = xp.len() / in_len;
        let (oh, ow) = (g.h.output, g.w.output);
        let plane = oh * ow * LANES;
        let [hp, wp] = padded_map(g);
        let taps = g.h.kernel * g.w.kernel;
        let out_blocks = blocked::blocks(g.out_channels);
        let blocks = group_blocks(out_blocks, 3.min(isa.preferred_tile().blocks));
        let stride = self.block_stride;
        dw.par_chunks_mut(blocks * stride)
            .enumerate()
            .for_each(|(grp, dw_group)| {
                let first_block = grp * blocks;
                {
                    let mut runs = Vec::with_capacity(count * oh);
                    let runs = &mut runs;
                    for c in 0..g.in_channels {
                        for ky in 0..g.h.kernel {
                            runs.clear();
                            for n in 0..count {
                                for oy in 0..oh {
                                    let dy_at = n * out_len + first_block * plane + oy * ow * LANES;
                                    let x_at = n * in_len + (c * hp + oy * g.h.stride + ky * g.h.dilation) * wp;
                                    runs.push((dy_at, x_at));
                                }
                            }
                            let tile = Tile {
                                shape: TileShape {
                                    blocks: dw_group.len().div_ceil(stride),
                                    pixels: g.w.kernel,
                                },
                                runs,
                                depth: ow,
                                w_block_stride: plane,
                                x_pixel_stride: g.w.dilation,
                                x_depth_stride: g.w.stride,
                                c_offset: (c * taps + ky * g.w.kernel) * LANES,
                                c_block_stride: stride,
                                epilogue: Epilogue {
                                    accumulate: true,
                                    bias: None,
                                    relu: false,
                                },
                            };
                            microkernel::run(isa, &tile, dy, xp, dw_group);
                        }
                    }
                }
            });
    }
}

/// The input map with the convolution's padding, `[hp, wp]`.
fn padded_map(g: &ConvGeometry) -> [usize; 2] {
    halo(g).padded([g.h.input, g.w.input])
}

/// The workspace of this path's passes over `g` (at the batch `g` holds).
pub(in crate::ops::conv) fn workspace(g: &ConvGeometry) -> WorkspaceSize {
    let [hp, wp] = padded_map(g);
    let in_len = g.in_channels * hp * wp;
    let out_len = blocked::image_len(g.out_channels, [g.h.output, g.w.output], Halo::default());
    let chunk = weight_grad_chunk(in_len + out_len).min(g.batch.max(1));
    let taps = g.h.kernel * g.w.kernel;
    WorkspaceSize {
        partials: blocked::blocks(g.out_channels) * microkernel::block_stride(g.in_channels * taps * LANES),
        ..WorkspaceSize::regions(chunk * (in_len + out_len))
    }
}
