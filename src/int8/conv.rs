//! A convolution on u8 images with i8 weights: the int8 microkernel's integer sums, requantized into
//! the next layer's bytes ([`super::requantize_pixels`]).
//!
//! The input is read in *channel groups* of 16 (the blocked layout, `[c/16][h][w][16]`) or, for an input
//! of 2 to 4 channels (a colour image), of 4 (`[1][h][w][4]`: one quad per pixel), with a halo of the
//! zero point as wide as the padding: padding is real 0, and the bias's zero-point term then holds at
//! every tap. Each tile's runs walk every (input group, tap) pair in place, as the float32 direct
//! convolution's; a weight block is `[group / 4 quads][16 outputs][4]`. A grey image (one channel) is
//! read as a plain `[h][w]` plane whose quads are four horizontal taps: one run per kernel row of
//! `⌈kw / 4⌉` quads (a 7×7 kernel: 14 quad steps per pixel instead of 49 quads three quarters empty).
//! The output is blocked u8 without halo.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{QuantParams, QuantizedWeights, RequantizeIsa, requantize_pixels};
use crate::blocked::{self, Halo};
use crate::microkernel::{Epilogue, Int8Isa, LANES, Tile, TileShape, run_int8};
use crate::ops::conv::ConvGeometry;
use crate::parallel::{self, Threads};

/// A convolution (with its bias, a folded batch norm's scale and shift, and an optional ReLU) quantized
/// for u8 inputs with `input`'s parameters and u8 outputs with `output`'s.
#[derive(Debug, Clone)]
pub struct QConv {
    geometry: ConvGeometry,
    /// Input channels per group: 16; 4 for an input of 2 to 4 channels; 1 for a grey image, whose quads
    /// are four horizontal taps.
    group: usize,
    /// Pixels per row of the input image: the padded width, and for a grey image enough more that the
    /// last quad of a row stays inside it.
    row_len: usize,
    /// Quad steps per run.
    depth: usize,
    /// `(weight offset, input offset)` per (input group, tap), in bytes from the tile's first weight
    /// and first input pixel.
    runs: Vec<(usize, usize)>,
    /// Bytes between consecutive output blocks' weights.
    block_stride: usize,
    packed: Vec<i8>,
    /// The quantized weights in PyTorch's `[out, in, kh, kw]` order, and their scales.
    weights: QuantizedWeights,
    /// Per output channel: the bias at the product scale `x_scale · w_scale[o]`.
    product_bias: Vec<i32>,
    /// Per output channel (padded to whole blocks): `product_bias` minus `zero_point(x) · Σ q`.
    bias: Vec<i32>,
    /// Per output channel (padded): `x_scale · w_scale[o] / y_scale`.
    multiplier: Vec<f32>,
    input: QuantParams,
    output: QuantParams,
    relu: bool,
}

impl QConv {
    /// Quantizes the float32 convolution `g` (`w` as `[out, in, kh, kw]`, `b` per output, then a ReLU
    /// with `relu`) for inputs in `input`'s parameters and outputs in `output`'s: per-channel symmetric
    /// weights ([`QuantizedWeights::new`]) and the bias rounded at the product scale.
    pub fn new(
        g: &ConvGeometry,
        w: &[f32],
        b: Option<&[f32]>,
        relu: bool,
        input: QuantParams,
        output: QuantParams,
    ) -> QConv {
        let weights = QuantizedWeights::new(w, g.out_channels);
        let bias = (0..g.out_channels)
            .map(|o| {
                let product_scale = f64::from(input.scale) * f64::from(weights.scales[o]);
                let real = b.map_or(0.0, |b| f64::from(b[o]));
                (real / product_scale)
                    .round_ties_even()
                    .clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
            })
            .collect();
        QConv::from_quantized(g, weights, bias, relu, input, output)
    }

    /// The convolution `g` with weights already quantized and `bias` at the product scale
    /// (`x_scale · w_scale[o]`, without the input's zero point), as an int8 checkpoint holds them.
    pub fn from_quantized(
        g: &ConvGeometry,
        weights: QuantizedWeights,
        bias: Vec<i32>,
        relu: bool,
        input: QuantParams,
        output: QuantParams,
    ) -> QConv {
        let g = ConvGeometry { batch: 1, ..*g };
        let taps = g.h.kernel * g.w.kernel;
        let per_output = g.in_channels * taps;
        assert_eq!(
            weights.values.len(),
            g.out_channels * per_output,
            "conv weights [out, in, kh, kw]"
        );
        assert!(
            weights.scales.len() == g.out_channels && bias.len() == g.out_channels,
            "one per output"
        );
        let group = match g.in_channels {
            1 if g.w.dilation == 1 => 1,
            1..=4 => 4,
            _ => LANES,
        };
        let groups = g.in_channels.div_ceil(group);
        let [hp, wp] = halo(&g).padded([g.h.input, g.w.input]);
        let (runs, depth, row_len): (Vec<(usize, usize)>, usize, usize) = if group == 1 {
            let quads = g.w.kernel.div_ceil(4);
            let row_len = wp.max((g.w.output.max(1) - 1) * g.w.stride + 4 * quads);
            let runs = (0..g.h.kernel)
                .map(|ky| (ky * quads * 4 * LANES, ky * g.h.dilation * row_len))
                .collect();
            (runs, quads, row_len)
        } else {
            let runs = (0..groups)
                .flat_map(|icg| (0..taps).map(move |tap| (icg, tap)))
                .map(|(icg, tap)| {
                    let (ky, kx) = (tap / g.w.kernel, tap % g.w.kernel);
                    let w_offset = (icg * taps + tap) * group * LANES;
                    let x_offset = ((icg * hp + ky * g.h.dilation) * wp + kx * g.w.dilation) * group;
                    (w_offset, x_offset)
                })
                .collect();
            (runs, group / 4, wp)
        };
        // Whole 64-byte lines, and off a 4 KiB multiple, where every block's stream would map to the
        // same L1 sets (see `microkernel::block_stride`).
        let bytes = (runs.len() * depth * 4 * LANES).next_multiple_of(64);
        let block_stride = if bytes % 4096 == 0 { bytes + 64 } else { bytes };
        let out_blocks = blocked::blocks(g.out_channels);
        let mut packed = vec![0i8; out_blocks * block_stride];
        for o in 0..g.out_channels {
            let (ob, lane) = (o / LANES, o % LANES);
            for c in 0..g.in_channels {
                for tap in 0..taps {
                    // The quad (from the block's first weight) and the byte within it.
                    let (quad, byte) = if group == 1 {
                        let (ky, kx) = (tap / g.w.kernel, tap % g.w.kernel);
                        (ky * depth + kx / 4, kx % 4)
                    } else {
                        let (icg, ic) = (c / group, c % group);
                        ((icg * taps + tap) * depth + ic / 4, ic % 4)
                    };
                    let at = ob * block_stride + quad * 4 * LANES + 4 * lane + byte;
                    packed[at] = weights.values[(o * g.in_channels + c) * taps + tap];
                }
            }
        }
        let padded = out_blocks * LANES;
        let (mut folded, mut multiplier) = (vec![0i32; padded], vec![0f32; padded]);
        for o in 0..g.out_channels {
            let weight_sum: i64 = weights.values[o * per_output..][..per_output]
                .iter()
                .map(|&q| i64::from(q))
                .sum();
            let with_zero_point = i64::from(bias[o]) - i64::from(input.zero_point) * weight_sum;
            folded[o] = with_zero_point.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
            let product_scale = f64::from(input.scale) * f64::from(weights.scales[o]);
            multiplier[o] = (product_scale / f64::from(output.scale)) as f32;
        }
        QConv {
            geometry: g,
            group,
            row_len,
            depth,
            runs,
            block_stride,
            packed,
            weights,
            product_bias: bias,
            bias: folded,
            multiplier,
            input,
            output,
            relu,
        }
    }

    /// The convolution's geometry (for one image).
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }

    /// Input channels per group of the input image: 16 (blocked), 4 for an input of 2 to 4 channels, 1
    /// for a grey image.
    pub fn input_group(&self) -> usize {
        self.group
    }

    /// The parameters of the input bytes.
    pub fn input_params(&self) -> QuantParams {
        self.input
    }

    /// The parameters of the output bytes.
    pub fn output_params(&self) -> QuantParams {
        self.output
    }

    /// The quantized weights (`[out, in, kh, kw]`) and their per-channel scales.
    pub fn weights(&self) -> &QuantizedWeights {
        &self.weights
    }

    /// The 32-bit bias per output channel, with the input's zero point folded in.
    pub fn bias(&self) -> &[i32] {
        &self.bias[..self.geometry.out_channels]
    }

    /// The bias per output channel at the product scale, without the input's zero point (as a
    /// checkpoint stores it).
    pub fn product_bias(&self) -> &[i32] {
        &self.product_bias
    }

    /// The requantization multiplier per output channel.
    pub fn multipliers(&self) -> &[f32] {
        &self.multiplier[..self.geometry.out_channels]
    }

    /// Whether a ReLU follows (the output clamped at its zero point).
    pub fn relu(&self) -> bool {
        self.relu
    }

    /// Bytes of one input image in the group layout with its halo.
    pub fn input_len(&self) -> usize {
        let g = &self.geometry;
        let [hp, _] = halo(g).padded([g.h.input, g.w.input]);
        g.in_channels.div_ceil(self.group) * hp * self.row_len * self.group
    }

    /// Bytes of one output image (blocked, no halo).
    pub fn output_len(&self) -> usize {
        let g = &self.geometry;
        blocked::image_len(g.out_channels, [g.h.output, g.w.output], Halo::default())
    }

    /// Whether a blocked u8 image without halo already is this convolution's input image (no padding,
    /// 16-channel groups), so it can be read where it lies.
    pub fn reads_blocked_in_place(&self) -> bool {
        self.group == LANES && halo(&self.geometry) == Halo::default()
    }

    /// Writes a blocked u8 image without halo (`x`, in the input's parameters) as this convolution's
    /// input image: the halo at the zero point.
    pub fn input_from_blocked(&self, x: &[u8], out: &mut [u8]) {
        assert_eq!(self.group, LANES, "a 4-channel group reads float images");
        let g = &self.geometry;
        let (h, w) = (g.h.input, g.w.input);
        assert_eq!(
            x.len(),
            blocked::image_len(g.in_channels, [h, w], Halo::default()),
            "blocked input"
        );
        assert_eq!(out.len(), self.input_len(), "input with halo");
        let halo = halo(g);
        if halo == Halo::default() {
            out.copy_from_slice(x);
            return;
        }
        let [hp, wp] = halo.padded([h, w]);
        let [top, _, left, _] = halo.0;
        out.fill(self.input.zero_point);
        for (b, plane) in x.chunks_exact(h * w * LANES).enumerate() {
            for (y, row) in plane.chunks_exact(w * LANES).enumerate() {
                out[((b * hp + y + top) * wp + left) * LANES..][..w * LANES].copy_from_slice(row);
            }
        }
    }

    /// Quantizes an NCHW float image `x` with the input's parameters into this convolution's input
    /// image (groups, halo at the zero point).
    pub fn input_from_nchw(&self, x: &[f32], out: &mut [u8]) {
        let g = &self.geometry;
        let (h, w) = (g.h.input, g.w.input);
        assert_eq!(x.len(), g.in_channels * h * w, "NCHW input");
        assert_eq!(out.len(), self.input_len(), "input with halo");
        let [hp, _] = halo(g).padded([h, w]);
        let [top, _, left, _] = halo(g).0;
        out.fill(self.input.zero_point);
        for (c, plane) in x.chunks_exact(h * w).enumerate() {
            let (icg, ic) = (c / self.group, c % self.group);
            for (y, row) in plane.chunks_exact(w).enumerate() {
                let first = ((icg * hp + y + top) * self.row_len + left) * self.group + ic;
                for (xx, &v) in row.iter().enumerate() {
                    out[first + xx * self.group] = self.input.quantize(v);
                }
            }
        }
    }

    /// The convolution of one input image `x` ([`QConv::input_len`] bytes) into the blocked u8 image
    /// `y`: the sums on `isa`'s int8 microkernel, requantized with `requantize`'s build, the groups of
    /// output blocks across the pool.
    pub fn forward_image(&self, x: &[u8], y: &mut [u8], isa: Int8Isa, requantize: RequantizeIsa) {
        self.forward_image_on(x, y, (isa, requantize), Threads::Pool);
    }

    /// [`QConv::forward_image`] on the pool, or on this thread with [`Threads::One`].
    pub(crate) fn forward_image_on(
        &self,
        x: &[u8],
        y: &mut [u8],
        (isa, requantize): (Int8Isa, RequantizeIsa),
        threads: Threads,
    ) {
        let g = &self.geometry;
        assert_eq!(x.len(), self.input_len(), "input with halo");
        assert_eq!(y.len(), self.output_len(), "blocked output");
        let (oh, ow) = (g.h.output, g.w.output);
        let plane = oh * ow * LANES;
        if plane == 0 {
            return;
        }
        let wp = self.row_len;
        let out_blocks = blocked::blocks(g.out_channels);
        let most = isa.preferred_tile().blocks;
        let blocks = match threads {
            Threads::One => most,
            Threads::Pool => (1..=most)
                .rev()
                .find(|&b| out_blocks.div_ceil(b) >= parallel::threads())
                .unwrap_or(1),
        };
        // A 1×1, stride-1, unpadded convolution reads output pixel `i` at input pixel `i`: the map is one
        // long row, which fills whole tiles.
        let (rows, cols) = if g.is_pointwise() { (1, oh * ow) } else { (oh, ow) };
        // The runs in chunks whose weights (for a group's blocks) stay within ~24 KB of L1, the sums
        // carried between chunks in 32-bit integers (exact), as the float32 kernel does.
        let run_weights = blocks * self.depth * 4 * LANES;
        let chunk_runs = (24 * 1024 / run_weights).max(1);
        let group = |first: usize, y_group: &mut [u8]| {
            let group_blocks = y_group.len() / plane;
            let widest = pixels_for(isa, group_blocks);
            let pixels = cols.div_ceil(cols.div_ceil(widest));
            let weights = &self.packed[first * self.block_stride..];
            SUMS.with_borrow_mut(|sums| {
                if sums.len() < group_blocks * plane {
                    sums.resize(group_blocks * plane, 0);
                }
                let sums = &mut sums[..group_blocks * plane];
                for (chunk, runs) in self.runs.chunks(chunk_runs).enumerate() {
                    for oy in 0..rows {
                        for ox in (0..cols).step_by(pixels) {
                            let tile = Tile {
                                shape: TileShape {
                                    blocks: group_blocks,
                                    pixels: pixels.min(cols - ox),
                                },
                                runs,
                                depth: self.depth,
                                w_block_stride: self.block_stride,
                                x_pixel_stride: g.w.stride * self.group,
                                x_depth_stride: 1,
                                c_offset: (oy * cols + ox) * LANES,
                                c_block_stride: plane,
                                epilogue: Epilogue {
                                    accumulate: chunk > 0,
                                    ..Epilogue::default()
                                },
                            };
                            let x_at = (oy * g.h.stride * wp + ox * g.w.stride) * self.group;
                            run_int8(isa, &tile, weights, &x[x_at..], sums);
                        }
                    }
                }
                let floor = if self.relu { self.output.zero_point } else { 0 };
                for (b, (sums, out)) in sums
                    .chunks_exact(plane)
                    .zip(y_group.chunks_exact_mut(plane))
                    .enumerate()
                {
                    let channels = (first + b) * LANES..(first + b + 1) * LANES;
                    requantize_pixels(
                        requantize,
                        sums,
                        &self.bias[channels.clone()],
                        &self.multiplier[channels],
                        (self.output.zero_point, floor),
                        out,
                    );
                }
            });
        };
        match threads {
            Threads::Pool => y
                .par_chunks_mut(blocks * plane)
                .enumerate()
                .for_each(|(i, y_group)| group(i * blocks, y_group)),
            Threads::One => y
                .chunks_mut(blocks * plane)
                .enumerate()
                .for_each(|(i, y_group)| group(i * blocks, y_group)),
        }
    }
}

thread_local! {
    /// Each thread's 32-bit sums of one group of output planes, kept between calls.
    static SUMS: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

/// The widest tile `isa` runs for `blocks` output blocks: as many accumulators as its preferred tile.
fn pixels_for(isa: Int8Isa, blocks: usize) -> usize {
    let preferred = isa.preferred_tile();
    if blocks >= preferred.blocks {
        return preferred.pixels;
    }
    (preferred.blocks * preferred.pixels / blocks).clamp(preferred.pixels, crate::microkernel::max_pixels(blocks))
}

/// The halo a convolution's input needs: its padding.
fn halo(g: &ConvGeometry) -> Halo {
    Halo([g.h.pad_lo, g.h.pad_hi, g.w.pad_lo, g.w.pad_hi])
}
