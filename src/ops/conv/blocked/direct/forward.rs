//! The forward pass of a direct convolution: one blocked image at a time through the microkernel, and
//! batches of NCHW or blocked images run through it (which the input gradient reuses).

use rayon::prelude::*;

use super::packing::{PackedConv, group_blocks, halo};
use super::weight_grad::InPlace;
use super::{DirectWeights, Kernels};
use crate::bf16;
use crate::blocked::{self, Halo, Layout};
use crate::microkernel::{self, Bf16Isa, Epilogue, Isa, LANES, Tile, TileShape};
use crate::parallel::{self, Threads, for_each_chunk_mut, for_each_part};
use crate::tensor::{Images, ImagesMut};
use crate::workspace::Workspace;

/// `y = conv(x) + bias` (then `max(·, 0)` with `relu`) for a batch: `x` holds blocked images with the
/// [`halo`] of `packed`'s convolution, `y` blocked images without halo, both one after another. With
/// `accumulate`, the result is added to `y` instead (before the ReLU).
pub fn forward_blocked(packed: &PackedConv, x: &[f32], y: &mut [f32], accumulate: bool, relu: bool, isa: Isa) {
    let (in_len, out_len) = packed.image_lens();
    let batch = x.len() / in_len;
    assert_eq!(x.len(), batch * in_len, "blocked input with halo");
    assert_eq!(y.len(), batch * out_len, "blocked output");
    let one = |x_img: &[f32], y_img: &mut [f32], threads| match packed.bf16_isa() {
        None => forward_image(packed, Pixels::F32(x_img), y_img, accumulate, relu, isa, threads),
        Some(_) => {
            let mut x_bf16 = vec![0; x_img.len()];
            bf16::convert(x_img, &mut x_bf16);
            forward_image(packed, Pixels::Bf16(&x_bf16), y_img, accumulate, relu, isa, threads)
        }
    };
    if parallel::pieces_fill_threads(batch) {
        y.par_chunks_mut(out_len)
            .zip(x.par_chunks(in_len))
            .for_each(|(y_img, x_img)| one(x_img, y_img, Threads::One));
    } else {
        for (y_img, x_img) in y.chunks_mut(out_len).zip(x.chunks(in_len)) {
            one(x_img, y_img, Threads::Pool);
        }
    }
}

/// A blocked input image as a kernel reads it: float32, or bf16 for weights packed in bf16.
#[derive(Clone, Copy)]
pub(super) enum Pixels<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

/// Which microkernel build a pass runs: the float32 one, or the bf16 one its weights were packed for.
#[derive(Clone, Copy)]
pub(super) enum Build {
    F32(Isa),
    Bf16(Bf16Isa),
}

impl Build {
    /// The build `packed` runs with float32 instruction set `isa`.
    pub(super) fn of(packed: &PackedConv, isa: Isa) -> Build {
        packed.bf16_isa().map_or(Build::F32(isa), Build::Bf16)
    }

    fn preferred_tile(self) -> TileShape {
        match self {
            Build::F32(isa) => isa.preferred_tile(),
            Build::Bf16(isa) => isa.preferred_tile(),
        }
    }

    fn tile_pixels(self, blocks: usize) -> usize {
        match self {
            Build::F32(isa) => isa.tile_pixels(blocks),
            Build::Bf16(isa) => isa.tile_pixels(blocks),
        }
    }

    /// Bytes of one weight value.
    fn weight_size(self) -> usize {
        match self {
            Build::F32(_) => 4,
            Build::Bf16(_) => 2,
        }
    }
}

/// One blocked image of [`forward_blocked`]: tiles in groups of output blocks, the groups across the
/// pool (as many groups as keep every thread busy) or in order on this thread.
pub(super) fn forward_image(
    packed: &PackedConv,
    x_img: Pixels<'_>,
    y_img: &mut [f32],
    accumulate: bool,
    relu: bool,
    isa: Isa,
    threads: Threads,
) {
    let g = &packed.geometry;
    let (oh, ow) = (g.h.output, g.w.output);
    let plane = oh * ow * LANES;
    let [_, wp] = halo(g).padded([g.h.input, g.w.input]);
    let build = Build::of(packed, isa);
    let TileShape { blocks, .. } = build.preferred_tile();
    let blocks = match threads {
        Threads::One => blocks,
        Threads::Pool => group_blocks(blocked::blocks(g.out_channels), blocks),
    };
    // A 1×1, stride-1, unpadded convolution reads pixel `i` of the output at input pixel `i`: the whole
    // map is one row, so a 3×3 map fills a 6-pixel tile and a 3-pixel one instead of three 3-pixel ones.
    let (rows, cols) = if g.is_pointwise() { (1, oh * ow) } else { (oh, ow) };
    // The runs in chunks of whole input blocks whose weights (for `blocks` output blocks) stay within
    // ~24 KB, half of a 48 KB L1: every tile of the image then reuses one chunk's weights from L1
    // instead of streaming all of them from L2 for its few pixels. A tile's sums go through the output
    // between chunks (stored and reloaded exactly, in the same order), so the result has the same bits.
    let taps = g.h.kernel * g.w.kernel;
    let block_weights = blocks * taps * LANES * LANES * build.weight_size();
    let chunk_runs = (24 * 1024 / block_weights).max(1) * taps;
    let total_runs = packed.runs.len();
    // Each group of `blocks` output blocks writes only its own planes.
    for_each_chunk_mut(y_img, blocks * plane, threads, |group, y_group| {
        let first_block = group * blocks;
        let shape_blocks = y_group.len() / plane;
        // As wide as the set allows for this many blocks, split evenly along the row (a 32-pixel row in
        // two tiles of 16 rather than 16, 16 and nothing; 24 in two of 12 rather than 16 and 8).
        let widest = build.tile_pixels(shape_blocks);
        let pixels = cols.div_ceil(cols.div_ceil(widest));
        let weights = &packed.weights[first_block * packed.block_stride..];
        let bias = &packed.bias[first_block * LANES..];
        for first_run in (0..total_runs).step_by(chunk_runs) {
            let last = first_run + chunk_runs >= total_runs;
            let epilogue = Epilogue {
                accumulate: accumulate || first_run > 0,
                bias: last.then_some(bias),
                relu: relu && last,
            };
            let runs = &packed.runs[first_run..(first_run + chunk_runs).min(total_runs)];
            for oy in 0..rows {
                for ox in (0..cols).step_by(pixels) {
                    let tile = Tile {
                        shape: TileShape {
                            blocks: shape_blocks,
                            pixels: pixels.min(cols - ox),
                        },
                        runs,
                        // bf16 steps take input channels in pairs.
                        depth: if matches!(build, Build::Bf16(_)) {
                            LANES / 2
                        } else {
                            LANES
                        },
                        w_block_stride: packed.block_stride,
                        x_pixel_stride: g.w.stride * LANES,
                        x_depth_stride: 1,
                        c_offset: (oy * cols + ox) * LANES,
                        c_block_stride: plane,
                        epilogue,
                    };
                    let x_at = (oy * g.h.stride * wp + ox * g.w.stride) * LANES;
                    match (x_img, &packed.bf16) {
                        (Pixels::F32(x), None) => microkernel::run(isa, &tile, weights, &x[x_at..], y_group),
                        (Pixels::Bf16(x), Some(b)) => {
                            let weights = &b.weights[first_block * packed.block_stride..];
                            microkernel::run_bf16(b.isa, &tile, weights, &x[x_at..], y_group)
                        }
                        _ => unreachable!("bf16 weights read bf16 inputs, float32 weights float32 ones"),
                    }
                }
            }
        }
    });
}

/// Where a direct convolution reads its input images: `images` in `layout`, `channels` channels on an
/// `[h, w]` map, to become blocked images with `halo`.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub(super) images: Images<'a>,
    pub(super) layout: Layout,
    pub(super) channels: usize,
    pub(super) map: [usize; 2],
    pub(super) halo: Halo,
    /// The convolution reads these images as bf16: never in place, rounded when written.
    pub(super) bf16: bool,
}

impl<'a> Source<'a> {
    /// The source of `packed`'s convolution: its input images `images` in `layout`.
    pub(super) fn of(packed: &PackedConv, images: Images<'a>, layout: Layout) -> Self {
        let g = &packed.geometry;
        Source {
            images,
            layout,
            channels: g.in_channels,
            map: [g.h.input, g.w.input],
            halo: halo(g),
            bf16: packed.bf16_isa().is_some(),
        }
    }

    /// Writes image `n` into `out` as a blocked image with the halo (its values rounded to bf16 for a
    /// bf16 convolution).
    pub(super) fn write_blocked(&self, n: usize, out: &mut [f32]) {
        let image = self.images.get(n);
        match self.layout {
            Layout::Nchw => blocked::from_nchw(image, self.channels, self.map, self.halo, out),
            Layout::Blocked => blocked::add_halo(image, self.channels, self.map, self.halo, out),
        }
        if self.bf16 {
            bf16::round_slice(out);
        }
    }

    /// Whether the images already are blocked images with the halo (a blocked layout, and no halo to
    /// add), so they can be read where they lie (in float32).
    pub(super) fn readable_in_place(&self) -> bool {
        self.layout == Layout::Blocked && self.halo == Halo::default() && !self.bf16
    }

    /// Image `n` as a bf16 blocked image with the halo, converted into `scratch` (a float32 image's
    /// worth, of which the bf16 image takes half).
    pub(super) fn blocked_bf16<'r>(&self, n: usize, scratch: &'r mut [f32]) -> &'r [u16] {
        let image = self.images.get(n);
        if self.layout == Layout::Nchw {
            blocked::from_nchw(image, self.channels, self.map, self.halo, scratch);
            return bf16::convert_in_place(scratch);
        }
        // Blocked: each row converted straight into its place in the padded bf16 image (one pass; the
        // halo is zero).
        let [h, w] = self.map;
        let [hp, wp] = self.halo.padded(self.map);
        let [top, _, left, _] = self.halo.0;
        let len = blocked::image_len(self.channels, self.map, self.halo);
        let out = &mut bf16::as_bf16_scratch(scratch)[..len];
        if self.halo == Halo::default() {
            bf16::convert(image, out);
            return out;
        }
        out.fill(0);
        for (b, plane) in image.chunks_exact(h * w * LANES).enumerate() {
            for (y, row) in plane.chunks_exact(w * LANES).enumerate() {
                bf16::convert(row, &mut out[((b * hp + y + top) * wp + left) * LANES..][..w * LANES]);
            }
        }
        out
    }

    /// Image `n` as the kernel of a convolution packed like `packed` reads it: [`Source::blocked`] in
    /// float32, [`Source::blocked_bf16`] in bf16.
    pub(super) fn pixels<'r>(&self, n: usize, scratch: &'r mut [f32]) -> Pixels<'r>
    where
        'a: 'r,
    {
        if self.bf16 {
            Pixels::Bf16(self.blocked_bf16(n, scratch))
        } else {
            Pixels::F32(self.blocked(n, scratch))
        }
    }

    /// The images as they lie, when they already are blocked images with the halo.
    pub(super) fn in_place(&self) -> Option<InPlace<'a>> {
        self.readable_in_place().then(|| {
            let (data, first, stride) = self.images.storage();
            InPlace { data, first, stride }
        })
    }

    /// Image `n` as a blocked image with the halo: itself when it already is one, else written into
    /// `scratch`.
    pub(super) fn blocked<'r>(&self, n: usize, scratch: &'r mut [f32]) -> &'r [f32]
    where
        'a: 'r,
    {
        if self.readable_in_place() {
            return self.images.get(n);
        }
        self.write_blocked(n, scratch);
        scratch
    }
}

/// `y = conv(x) + bias` (then `max(·, 0)` with `relu`) on images in either layout: an NCHW input is
/// reordered into the blocked layout in `ws` (a blocked one is read in place, or copied there when the
/// convolution pads), and a blocked output is written in place (an NCHW one reordered from `ws`).
#[allow(clippy::too_many_arguments)]
pub fn forward_images(
    weights: &DirectWeights,
    x: Images<'_>,
    x_layout: Layout,
    relu: bool,
    y: &mut ImagesMut<'_>,
    y_layout: Layout,
    ws: &mut Workspace,
    isa: Isa,
) {
    let packed = match weights.kernels(x_layout) {
        Kernels::Blocked(packed) => packed,
        Kernels::FewChannels(stem) => return stem.forward_images(x, relu, y, y_layout, ws, isa),
    };
    let source = Source::of(packed, x, x_layout);
    let out = Output {
        layout: y_layout,
        add: false,
        relu,
    };
    run_images(packed, source, out, y, ws, isa);
}

/// How [`run_images`] stores each image's result.
#[derive(Clone, Copy)]
pub(super) struct Output {
    pub(super) layout: Layout,
    /// Add to the output instead of overwriting it.
    pub(super) add: bool,
    pub(super) relu: bool,
}

/// Convolves every image of `source` with `packed` into the same image of `out`: images in static
/// parts across the pool when they fill it, else one at a time with each image's tiles across the
/// pool. Each part's blocked scratch is its region of `ws`.
pub(super) fn run_images(
    packed: &PackedConv,
    source: Source<'_>,
    output: Output,
    out: &mut ImagesMut<'_>,
    ws: &mut Workspace,
    isa: Isa,
) {
    let (in_len, out_len) = packed.image_lens();
    let region_len = run_images_region(packed, output.layout);
    let g = &packed.geometry;
    let map_out = [g.h.output, g.w.output];
    let mut images: Vec<&mut [f32]> = out.iter_mut().map(|(_, img)| img).collect();
    for_each_part(
        &mut images,
        1,
        ws.regions(region_len),
        region_len,
        |first, run, region, threads| {
            let (xb, yb) = region.split_at_mut(in_len);
            for (i, img) in run.iter_mut().enumerate() {
                let x_img = source.pixels(first + i, xb);
                match output.layout {
                    Layout::Blocked => forward_image(packed, x_img, img, output.add, output.relu, isa, threads),
                    Layout::Nchw => {
                        let yb = &mut yb[..out_len];
                        forward_image(packed, x_img, yb, false, output.relu, isa, threads);
                        if output.add {
                            blocked::add_to_nchw(yb, g.out_channels, map_out, img);
                        } else {
                            blocked::to_nchw(yb, g.out_channels, map_out, img);
                        }
                    }
                }
            }
        },
    );
}

/// The region [`run_images`] takes per part: a blocked input image and, for an NCHW output, a
/// blocked output image.
pub(super) fn run_images_region(packed: &PackedConv, out_layout: Layout) -> usize {
    let (in_len, out_len) = packed.image_lens();
    in_len
        + match out_layout {
            Layout::Nchw => out_len,
            Layout::Blocked => 0,
        }
}
