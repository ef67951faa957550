//! The weight gradient of a bf16 direct convolution on the bf16 microkernel. Its reduction runs over
//! output pixels, so a step's pair is two *consecutive pixels*, not two channels: both operands are
//! written as pixel pairs first, `[pairs][16 channels][2]` per channel block and line (a line is one
//! row, or the whole map where rows continue each other in the input too). The same layout serves as
//! the kernel's weight operand (the output gradient: 16 output channels of a pair per step) and as its
//! broadcast operand (the input: the pair of one input channel, 16 channels apart from the next pair).
//!
//! A kernel column `kx` starts the input's pairs at pixel `kx` of the line, so the input is written
//! twice where some tap needs it: pairs from even pixels and pairs from odd pixels. oneDNN transposes
//! the input instead; the interleave reads and writes whole 16-lane pixels, which vectorizes.
//!
//! Values are rounded to bf16 (nearest even) as they are written; the products are summed in float32
//! into the same packed-layout gradient as the float32 path. A line of odd length ends with a zero
//! output-gradient pixel, whose product with whatever input it meets is zero (for finite inputs).
//! Only convolutions with a horizontal stride of 1 qualify ([`pairs_apply`]); the others round their
//! operands and run the float32 kernel.

use rayon::prelude::*;

use super::forward::Source;
use super::packing::{PackedConv, halo};
use crate::bf16;
use crate::blocked::{self, Layout};
use crate::microkernel::{self, Bf16Isa, Epilogue, LANES, Tile, TileShape};

/// Whether `packed`'s weight gradient runs on the bf16 microkernel: a horizontal stride of 1 puts
/// consecutive output pixels on adjacent input pixels.
pub(super) fn pairs_apply(packed: &PackedConv) -> bool {
    packed.bf16_isa().is_some() && packed.geometry.w.stride == 1
}

/// The lines of one image, and the sizes of its pair layouts.
#[derive(Clone, Copy)]
pub(super) struct Lines {
    /// A line is the whole map (else one row). Not `in_lines == 1`: a one-row map has rows too.
    whole: bool,
    /// Output lines per image.
    out_lines: usize,
    /// Pairs per output line.
    pairs: usize,
    /// Input lines per image.
    in_lines: usize,
    /// Pairs per input line: room for the last pair of any tap (odd lengths read one pixel past).
    in_pairs: usize,
    /// Whether some tap starts at an odd pixel of its line (then the odd-aligned pairs are written).
    odd: bool,
}

impl Lines {
    /// The lines of `packed`'s convolution: whole maps where the input's rows are as wide as the
    /// output's and both strides are 1 (every unpadded 1×1 layer), as the float32 path does; else rows.
    pub(super) fn of(packed: &PackedConv) -> Lines {
        let g = &packed.geometry;
        let [hp, wp] = halo(g).padded([g.h.input, g.w.input]);
        let (oh, ow) = (g.h.output, g.w.output);
        let whole = ow == wp && g.h.stride == 1 && g.w.stride == 1;
        let (out_lines, out_len, in_lines, in_len) = if whole {
            (1, oh * ow, 1, hp * wp)
        } else {
            (oh, ow, hp, wp)
        };
        let odd = (0..g.h.kernel * g.w.kernel).any(|tap| Lines::start(g, whole, wp, tap) % 2 == 1);
        Lines {
            whole,
            out_lines,
            pairs: out_len.div_ceil(2),
            in_lines,
            in_pairs: in_len / 2 + 1,
            odd,
        }
    }

    /// The input pixel, within its line, where tap `tap` of output pixel 0 reads.
    fn start(g: &crate::ops::conv::ConvGeometry, whole: bool, wp: usize, tap: usize) -> usize {
        let (ky, kx) = (tap / g.w.kernel, tap % g.w.kernel);
        let column = kx * g.w.dilation;
        if whole { ky * g.h.dilation * wp + column } else { column }
    }

    /// bf16 values of one image's output-gradient pairs for `out_channels` channels.
    pub(super) fn dy_len(&self, out_channels: usize) -> usize {
        blocked::blocks(out_channels) * self.out_lines * self.pairs * 2 * LANES
    }

    /// bf16 values of one image's input pairs (the even-aligned and, if needed, the odd-aligned ones)
    /// for `in_channels` channels.
    pub(super) fn x_len(&self, in_channels: usize) -> usize {
        let copies = if self.odd { 2 } else { 1 };
        copies * self.x_copy_len(in_channels)
    }

    fn x_copy_len(&self, in_channels: usize) -> usize {
        blocked::blocks(in_channels) * self.in_lines * self.in_pairs * 2 * LANES
    }
}

/// Writes image `n` of `source` as bf16 pairs of pixels starting at pixel `offset` of each line:
/// value `((block · lines + line) · pairs + j) · 32 + 2 · lane + t` is channel `16 · block + lane` at
/// pixel `offset + 2j + t` of the line (with the source's halo), zero outside the image.
fn write_pairs(source: &Source<'_>, n: usize, whole: bool, lines: usize, pairs: usize, offset: usize, out: &mut [u16]) {
    let image = source.images.get(n);
    let [h, w] = source.map;
    let [_, wp] = source.halo.padded(source.map);
    let [top, _, left, _] = source.halo.0;
    // The pixels of line `line` that lie in the image: padded positions `a..b`, the first being image
    // pixel `base` (row after row). A whole-map line has no halo across the width (`w == wp`).
    let interior = |line: usize| -> Option<(usize, usize, usize)> {
        if whole {
            debug_assert_eq!(w, wp, "a whole-map line has no halo across the width");
            Some((top * wp, (top + h) * wp, 0))
        } else {
            (top..top + h)
                .contains(&line)
                .then(|| (left, left + w, (line - top) * w))
        }
    };
    out.fill(0);
    for (i, line_out) in out.chunks_exact_mut(pairs * 2 * LANES).enumerate() {
        let (block, line) = (i / lines, i % lines);
        let Some((a, b, base)) = interior(line) else {
            continue;
        };
        match source.layout {
            Layout::Blocked => {
                let plane = &image[block * h * w * LANES..][..h * w * LANES];
                let pixel = |q: usize| &plane[(base + q - a) * LANES..][..LANES];
                // Pairs whose two pixels are both in the image, converted 32 values at a time.
                let j_lo = a.saturating_sub(offset).div_ceil(2);
                let j_hi = (b.saturating_sub(offset) / 2).min(pairs);
                if j_hi > j_lo {
                    let first = base + offset + 2 * j_lo - a;
                    let src = &plane[first * LANES..][..(j_hi - j_lo) * 2 * LANES];
                    bf16::interleave_pixel_pairs(src, &mut line_out[j_lo * 2 * LANES..j_hi * 2 * LANES]);
                }
                // The pair at each edge that has one pixel in the image.
                let edges = [j_lo.checked_sub(1), Some(j_hi.max(j_lo))];
                for j in edges.into_iter().flatten().filter(|&j| j < pairs) {
                    for t in 0..2 {
                        let q = offset + 2 * j + t;
                        if (a..b).contains(&q) {
                            for (lane, &v) in pixel(q).iter().enumerate() {
                                line_out[j * 2 * LANES + 2 * lane + t] = bf16::from_f32(v);
                            }
                        }
                    }
                }
            }
            Layout::Nchw => {
                for lane in 0..LANES.min(source.channels.saturating_sub(block * LANES)) {
                    let plane = &image[(block * LANES + lane) * h * w..][..h * w];
                    for j in 0..pairs {
                        for t in 0..2 {
                            let q = offset + 2 * j + t;
                            if (a..b).contains(&q) {
                                line_out[j * 2 * LANES + 2 * lane + t] = bf16::from_f32(plane[base + q - a]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Writes `count` images from `first` of the input `x` and the output gradient `dy` as bf16 pairs
/// into `xs` and `dys` (image after image), each image on its own task.
pub(super) fn write_operands(
    x: &Source<'_>,
    dy: &Source<'_>,
    lines: &Lines,
    first: usize,
    count: usize,
    xs: &mut [u16],
    dys: &mut [u16],
) {
    let (x_len, dy_len) = (lines.x_len(x.channels), lines.dy_len(dy.channels));
    let x_copy = lines.x_copy_len(x.channels);
    xs[..count * x_len]
        .par_chunks_mut(x_len)
        .enumerate()
        .for_each(|(i, out)| {
            let (even, odd) = out.split_at_mut(x_copy);
            write_pairs(x, first + i, lines.whole, lines.in_lines, lines.in_pairs, 0, even);
            if lines.odd {
                write_pairs(x, first + i, lines.whole, lines.in_lines, lines.in_pairs, 1, odd);
            }
        });
    dys[..count * dy_len]
        .par_chunks_mut(dy_len)
        .enumerate()
        .for_each(|(i, out)| write_pairs(dy, first + i, lines.whole, lines.out_lines, lines.pairs, 0, out));
}

impl PackedConv {
    /// Adds the weight gradient of `count` images into the packed-layout `dw`, from their inputs `xs`
    /// and output gradients `dys` as [`write_operands`] wrote them, on the bf16 microkernel `isa`. The
    /// same parts and order as the float32 path.
    pub(super) fn accumulate_weight_grad_bf16(
        &self,
        xs: &[u16],
        dys: &[u16],
        count: usize,
        dw: &mut [f32],
        isa: Bf16Isa,
    ) {
        // A tile's pairs here are two pixels of one channel, 16 channels apart: AMX reads a row's pairs
        // contiguously, so its builds hand these tiles to a vector build.
        let isa = isa.for_strided_pairs();
        let g = &self.geometry;
        let lines = Lines::of(self);
        let (x_len, dy_len) = (lines.x_len(g.in_channels), lines.dy_len(g.out_channels));
        let x_copy = lines.x_copy_len(g.in_channels);
        assert_eq!(xs.len(), count * x_len, "bf16 input pairs");
        assert_eq!(dys.len(), count * dy_len, "bf16 output-gradient pairs");
        assert_eq!(dw.len(), self.weights.len(), "weight gradient in the packed layout");
        let [_, wp] = halo(g).padded([g.h.input, g.w.input]);
        let whole = lines.whole;
        let taps = g.h.kernel * g.w.kernel;
        let (pair, stride) = (2 * LANES, self.block_stride);
        let accumulate = |first_block: usize, blocks: usize, icbs: std::ops::Range<usize>, dw_part: &mut [f32]| {
            // The tile's "pixels" are input channels of one block.
            let channels = isa.tile_pixels(blocks).min(LANES);
            let mut runs = Vec::with_capacity(count * lines.out_lines);
            for icb in icbs.clone() {
                for tap in 0..taps {
                    let start = Lines::start(g, whole, wp, tap);
                    // The pairs that start at `start`: the even-aligned copy's, or the odd-aligned one's.
                    let (copy, first_pair) = (start % 2 * x_copy, start / 2);
                    let ky = tap / g.w.kernel;
                    runs.clear();
                    for n in 0..count {
                        for l in 0..lines.out_lines {
                            let dy_at = n * dy_len + (first_block * lines.out_lines + l) * lines.pairs * pair;
                            // Output row l reads input row l·stride + ky·dilation; a whole map its one line.
                            let line = if whole { 0 } else { l * g.h.stride + ky * g.h.dilation };
                            let x_line = (icb * lines.in_lines + line) * lines.in_pairs;
                            runs.push((dy_at, n * x_len + copy + (x_line + first_pair) * pair));
                        }
                    }
                    for ic in (0..LANES).step_by(channels) {
                        let tile = Tile {
                            shape: TileShape {
                                blocks,
                                pixels: channels.min(LANES - ic),
                            },
                            runs: &runs,
                            depth: lines.pairs,
                            w_block_stride: lines.out_lines * lines.pairs * pair,
                            // Channel ic's pair is 2 values after channel ic-1's; the next pair 16 channels on.
                            x_pixel_stride: 2,
                            x_depth_stride: LANES,
                            c_offset: ((icb - icbs.start) * taps + tap) * LANES * LANES + ic * LANES,
                            c_block_stride: stride,
                            epilogue: Epilogue {
                                accumulate: true,
                                bias: None,
                                relu: false,
                            },
                        };
                        microkernel::run_bf16(isa, &tile, dys, &xs[2 * ic..], dw_part);
                    }
                }
            }
        };
        // As many output blocks per group as leave no thread idle in the last round (12 blocks on 2
        // threads: 4 groups of 3, not 3 groups of 4), the most such.
        let out_blocks = blocked::blocks(g.out_channels);
        let threads = crate::parallel::threads();
        let rounds = |b: usize| out_blocks.div_ceil(b).div_ceil(threads) * b;
        let most = (1..=isa.preferred_tile().blocks)
            .rev()
            .min_by_key(|&b| rounds(b))
            .unwrap_or(1);
        self.for_each_weight_grad_part(dw, most, accumulate);
    }
}
