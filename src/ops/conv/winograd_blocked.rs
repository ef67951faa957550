//! Winograd F(m×m, 3×3), m = 2 or 4 ([`super::winograd_math`]), on the blocked channel layout and
//! incept's microkernel: the Winograd that pays.
//!
//! The batch's output tiles (`m × m` pixels each, image after image) are cut into blocks of `T` tiles
//! sized so a block's transformed input and products stay in L2. For each block, in one pass:
//!
//! 1. input transform: each tile's `(m + 2)²` window, 16 input channels at a time (one vector: the
//!    blocked layout's lanes are channels), into `V[ξ][input block][tile][16]`, reading the image in
//!    place (zeros where the window leaves it, so no padded copy);
//! 2. for each group of output blocks (as many as one microkernel tile holds), the `(m + 2)²` products
//!    `M[ξ] = U[ξ] · V[ξ]` on the microkernel (the group's channels by tiles, one run of depth 16 per
//!    input block),
//! 3. and the group's output transform with bias and ReLU, straight into the blocked output, while its
//!    products are in cache.
//!
//! Each weight is read once per block, so the larger the block the fewer times the weights stream
//! through; holding one group's products instead of all of them lets a block hold 2-3× more tiles.
//!
//! `U` (the transformed weights) is packed once per weight update ([`WinogradWeights::repack`]) in the
//! microkernel's layout: per output block, `[ξ][input block][16 in][16 out]`.

use super::ConvGeometry;
use super::winograd_math::{self, Lanes};
use crate::blocked;
use crate::kernels::vectorize;
use crate::microkernel::{self, Epilogue, Isa, LANES, Tile, TileShape};
use crate::parallel::for_each_part;
use crate::tensor::{Images, ImagesMut};
use crate::workspace::{Workspace, WorkspaceSize};

/// Bytes of a block's transformed input and one group's products the tile-block size aims for: within
/// L2 (1 MiB or more on the machines we run), with room for the weights streaming through. On
/// googlenet-d2l's 3×3 layers at batch 128 (`cargo bench --bench conv -- 3x3/1`, two runs each), 256
/// KiB, 512 KiB and 1 MiB blocks ran within the spread between runs (F(4,3) on 12×12: 330-400,
/// 340-520, 320-400 GF/s of direct FLOPs); the weights are reused once per tile of a block, so
/// blocks much smaller lose.
const BLOCK_BYTES: usize = 512 * 1024;
/// The most tiles a block holds.
const MAX_TILES: usize = 96;

/// Whether this module computes `g`: a 3×3 kernel, stride 1, no dilation, padding of at most 2 a side.
pub fn eligible(g: &ConvGeometry) -> bool {
    [&g.h, &g.w]
        .iter()
        .all(|a| a.kernel == 3 && a.stride == 1 && a.dilation == 1 && a.pad_lo <= 2 && a.pad_hi <= 2)
}

/// The output tile side the plan runs `g`'s inference forward with (`g.batch` images at a time; F(4,3)
/// only if `fast`), or `None` for the direct microkernel. The rule, from
/// `cargo bench --bench conv -- 3x3/1` (googlenet-d2l's 3×3 layers, 2 threads, AVX-512, one run, GF/s
/// of direct FLOPs; direct / F(2,3) / F(4,3)):
///
/// - F(2,3) on every map by default: at batch 128, 24×24 264 / 250 / 374, 12×12 185-188 / 229-249 /
///   322-373, 6×6 161-183 / 236-271 / 209-273, 3×3 125-134 / 158-160 / 225-239; at batch 1, 12×12
///   163-170 / 179-248, 6×6 87-151 / 91-182;
///   but not with 64 input channels or fewer, whose products reduce over only 4 blocks: 64→192 @24
///   264 / 250, inception-v3's 64→96 @35 186 / 171;
/// - with `fast`, F(4,3) where it is faster again: maps of 8 and more, and of 3 and less (one tile a
///   map), whatever the channels (inception-v3's 64→96 @35: 246);
///
/// unless the batch has fewer than 8 tiles (4 per thread on the 2 threads measured; a fixed count, so
/// the choice, and with it every bit of the output, does not depend on the thread count): at batch 1
/// the 3×3 maps give one or four tiles, and ran 29-64 against the direct path's 84-101.
pub fn choose_tile(g: &ConvGeometry, fast: bool) -> Option<usize> {
    if !eligible(g) || g.in_channels < LANES || g.out_channels < LANES {
        return None;
    }
    let map = g.h.output.min(g.w.output);
    let tile = match (fast && !(4..8).contains(&map), g.in_channels > 64) {
        (true, _) => 4,
        (false, true) => 2,
        (false, false) => return None,
    };
    (tiles_per_image(g, tile) * g.batch >= 8).then_some(tile)
}

/// Output tiles of `tile` a side that cover one image of `g`.
fn tiles_per_image(g: &ConvGeometry, tile: usize) -> usize {
    g.h.output.div_ceil(tile) * g.w.output.div_ceil(tile)
}

/// Tiles per block for a batch of `batch` images: as many as [`BLOCK_BYTES`] holds in whole
/// microkernel tiles (a last call of one or two tiles costs up to a quarter of the time), but no more
/// than gives every thread a block. Each weight is read once per block, so more tiles reuse it more.
fn tiles_per_block(g: &ConvGeometry, tile: usize, batch: usize, isa: Isa) -> usize {
    let (in_blocks, out_blocks) = (blocked::blocks(g.in_channels), blocked::blocks(g.out_channels));
    let group = group_blocks(isa, out_blocks);
    let per_tile = (tile + 2) * (tile + 2) * (in_blocks + group) * LANES * 4;
    let pixels = isa.tile_pixels(group);
    let fits = (BLOCK_BYTES / per_tile / pixels * pixels).clamp(pixels, MAX_TILES);
    let total = tiles_per_image(g, tile) * batch;
    fits.min(total.div_ceil(crate::parallel::threads()).max(1))
}

/// Output blocks whose products a block computes together: one microkernel tile's.
fn group_blocks(isa: Isa, out_blocks: usize) -> usize {
    isa.preferred_tile().blocks.min(out_blocks)
}

/// The scratch of one block of `tiles` tiles on `isa`: its transformed input, then one group's products.
fn region_len(g: &ConvGeometry, tile: usize, tiles: usize, isa: Isa) -> usize {
    let group = group_blocks(isa, blocked::blocks(g.out_channels));
    (tile + 2) * (tile + 2) * (blocked::blocks(g.in_channels) + group) * tiles * LANES
}

/// The workspace [`WinogradWeights::forward_images`] takes over `g` (batches up to `g.batch`) with
/// tiles of `tile` a side, on any instruction set.
pub fn workspace(g: &ConvGeometry, tile: usize) -> WorkspaceSize {
    let most = Isa::ALL
        .iter()
        .map(|&isa| region_len(g, tile, tiles_per_block(g, tile, g.batch.max(1), isa), isa))
        .max();
    WorkspaceSize::regions(most.unwrap_or(0))
}

/// A convolution's weights transformed and packed for F(m×m, 3×3), its bias, and the runs of its
/// products.
#[derive(Debug, Clone)]
pub struct WinogradWeights {
    geometry: ConvGeometry,
    /// Output tile side: 2 or 4.
    tile: usize,
    /// Distance between consecutive output blocks' weights.
    block_stride: usize,
    weights: Vec<f32>,
    /// One per output channel, padded to whole blocks.
    bias: Vec<f32>,
}

impl WinogradWeights {
    /// Transforms PyTorch-layout weights `[out, in, 3, 3]` (and a bias) for `g` with output tiles of
    /// `tile` (2 or 4) a side. Panics unless [`eligible`].
    pub fn new(g: &ConvGeometry, tile: usize, w: &[f32], b: Option<&[f32]>) -> WinogradWeights {
        assert!(
            eligible(g),
            "Winograd needs a 3x3, stride-1, undilated convolution, found {g}"
        );
        assert!(
            tile == 2 || tile == 4,
            "Winograd output tiles are 2 or 4 a side, not {tile}"
        );
        let points = (tile + 2) * (tile + 2);
        let block_stride = microkernel::block_stride(points * blocked::blocks(g.in_channels) * LANES * LANES);
        let mut packed = WinogradWeights {
            geometry: *g,
            tile,
            block_stride,
            weights: vec![0.0; blocked::blocks(g.out_channels) * block_stride],
            bias: vec![0.0; blocked::blocks(g.out_channels) * LANES],
        };
        packed.repack(w, b);
        packed
    }

    /// Transforms new values of the same weights (after an optimizer step) into the existing buffers.
    pub fn repack(&mut self, w: &[f32], b: Option<&[f32]>) {
        let g = self.geometry;
        let (inputs, outputs) = (g.in_channels, g.out_channels);
        assert_eq!(w.len(), outputs * inputs * 9, "conv weights [out, in, 3, 3]");
        let (points, in_blocks) = (self.points(), blocked::blocks(inputs));
        let tile = self.tile;
        use rayon::prelude::*;
        self.weights
            .par_chunks_mut(self.block_stride)
            .enumerate()
            .for_each(|(ob, block)| {
                block.fill(0.0);
                for oc in 0..LANES.min(outputs.saturating_sub(ob * LANES)) {
                    let o = ob * LANES + oc;
                    for c in 0..inputs {
                        let k: &[f32; 9] = w[(o * inputs + c) * 9..][..9].try_into().expect("3x3");
                        let u = if tile == 4 {
                            winograd_math::kernel::<4>(k)
                        } else {
                            winograd_math::kernel::<2>(k)
                        };
                        let (icb, ic) = (c / LANES, c % LANES);
                        for (xi, &value) in u[..points].iter().enumerate() {
                            block[((xi * in_blocks + icb) * LANES + ic) * LANES + oc] = value;
                        }
                    }
                }
            });
        self.bias.fill(0.0);
        if let Some(b) = b {
            self.bias[..outputs].copy_from_slice(&b[..outputs]);
        }
    }

    /// The output tile side (2 or 4).
    pub fn tile(&self) -> usize {
        self.tile
    }

    fn points(&self) -> usize {
        (self.tile + 2) * (self.tile + 2)
    }

    /// `y = conv(x, w) + b`, rectified when `relu`, for blocked images `x` into blocked images `y`
    /// (neither with a halo), with `isa`'s microkernel.
    pub fn forward_images(&self, x: Images<'_>, relu: bool, y: &mut ImagesMut<'_>, ws: &mut Workspace, isa: Isa) {
        let batch = x.count();
        if batch == 0 || self.geometry.output_pixels() == 0 {
            return;
        }
        let g = &self.geometry;
        let per_block = tiles_per_block(g, self.tile, batch, isa);
        let total = tiles_per_image(g, self.tile) * batch;
        let region_len = region_len(g, self.tile, per_block, isa);
        let out = OutputImages::of(y);
        let mut blocks: Vec<usize> = (0..total.div_ceil(per_block)).collect();
        for_each_part(
            &mut blocks,
            1,
            ws.regions(region_len),
            region_len,
            |_, run, region, _| {
                for &block in run.iter() {
                    let first = block * per_block;
                    let tiles = per_block.min(total - first);
                    let step = Step {
                        weights: self,
                        x,
                        out: &out,
                        first,
                        tiles,
                        stride: per_block,
                        relu,
                        isa,
                    };
                    match self.tile {
                        4 => step.run::<4>(region),
                        _ => step.run::<2>(region),
                    }
                }
            },
        );
    }
}

/// The output images as raw pointers, so blocks of tiles from the same image can be written from
/// different threads (each output pixel belongs to exactly one tile).
struct OutputImages {
    images: Vec<(*mut f32, usize)>,
}

// SAFETY: the pointers come from disjoint `&mut` image slices that outlive every use (the
// `forward_images` call holds the `ImagesMut` borrow); each value is written by exactly one tile, so
// no two threads touch the same element.
unsafe impl Sync for OutputImages {}

impl OutputImages {
    fn of(y: &mut ImagesMut<'_>) -> OutputImages {
        OutputImages {
            images: y.iter_mut().map(|(_, img)| (img.as_mut_ptr(), img.len())).collect(),
        }
    }

    /// Stores 16 lanes at `offset` of image `n`.
    #[inline(always)]
    fn store(&self, n: usize, offset: usize, value: Lanes) {
        let (ptr, len) = self.images[n];
        assert!(offset + LANES <= len, "output offset {offset} past an image of {len}");
        // SAFETY: in bounds (checked above) of a live image slice; see the `Sync` impl for why no other
        // thread writes these 16 values.
        unsafe { std::ptr::copy_nonoverlapping(value.0.as_ptr(), ptr.add(offset), LANES) };
    }
}

/// One block of tiles through the three stages.
struct Step<'a> {
    weights: &'a WinogradWeights,
    x: Images<'a>,
    out: &'a OutputImages,
    /// The block's first tile, counting over the batch (image after image, row-major in each).
    first: usize,
    /// Tiles in the block.
    tiles: usize,
    /// The block's tile capacity: the distance between consecutive (point, channel block) rows of
    /// `V` and `M`.
    stride: usize,
    relu: bool,
    isa: Isa,
}

impl Step<'_> {
    fn run<const M: usize>(&self, region: &mut [f32]) {
        let g = &self.weights.geometry;
        let (in_blocks, out_blocks) = (blocked::blocks(g.in_channels), blocked::blocks(g.out_channels));
        let points = (M + 2) * (M + 2);
        let group = group_blocks(self.isa, out_blocks);
        let (v, m) = region.split_at_mut(points * in_blocks * self.stride * LANES);
        let m = &mut m[..points * group * self.stride * LANES];
        struct Input<'s, 'a, const M: usize>(&'s Step<'a>, &'s mut [f32]);
        impl<const M: usize> pulp::WithSimd for Input<'_, '_, M> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _: S) {
                self.0.input_transform::<M>(self.1)
            }
        }
        vectorize(Input::<M>(self, v));
        // One group of output blocks at a time: its products, then its output transform while they
        // are in cache, so `M` holds one group and the block can hold more tiles.
        struct Output<'s, 'a, const M: usize>(&'s Step<'a>, &'s [f32], usize, usize);
        impl<const M: usize> pulp::WithSimd for Output<'_, '_, M> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _: S) {
                self.0.output_transform::<M>(self.1, self.2, self.3)
            }
        }
        for first in (0..out_blocks).step_by(group) {
            let blocks = group.min(out_blocks - first);
            self.products(points, v, m, first, blocks);
            vectorize(Output::<M>(self, m, first, blocks));
        }
    }

    /// Image and tile row and column of the block's tile `t`.
    fn locate(&self, t: usize) -> (usize, usize, usize) {
        let g = &self.weights.geometry;
        let m = self.weights.tile;
        let tiles_w = g.w.output.div_ceil(m);
        let per_image = g.h.output.div_ceil(m) * tiles_w;
        let global = self.first + t;
        let (n, within) = (global / per_image, global % per_image);
        (n, within / tiles_w, within % tiles_w)
    }

    /// `V[ξ][icb][t] = (Bᵀ d B)[ξ]` for every tile `t` of the block and input block `icb`.
    #[inline(always)]
    fn input_transform<const M: usize>(&self, v: &mut [f32]) {
        let g = &self.weights.geometry;
        let window = M + 2;
        let (h, w) = (g.h.input as isize, g.w.input as isize);
        let in_blocks = blocked::blocks(g.in_channels);
        let plane = g.h.input * g.w.input * LANES;
        for t in 0..self.tiles {
            let (n, ty, tx) = self.locate(t);
            let image = self.x.get(n);
            let (y0, x0) = (
                (ty * M) as isize - g.h.pad_lo as isize,
                (tx * M) as isize - g.w.pad_lo as isize,
            );
            let inside = y0 >= 0 && x0 >= 0 && y0 + window as isize <= h && x0 + window as isize <= w;
            for icb in 0..in_blocks {
                let channels = &image[icb * plane..][..plane];
                // d[i][j]: the window, zero outside the image.
                let mut d = [[Lanes::ZERO; 6]; 6];
                for (i, row) in d.iter_mut().enumerate().take(window) {
                    let yy = y0 + i as isize;
                    for (j, value) in row.iter_mut().enumerate().take(window) {
                        let xx = x0 + j as isize;
                        if inside || (0..h).contains(&yy) && (0..w).contains(&xx) {
                            *value = Lanes::load(&channels[((yy * w + xx) as usize) * LANES..]);
                        }
                    }
                }
                // Bᵀ d (columns), then (Bᵀ d) B (rows).
                let mut cols = [[Lanes::ZERO; 6]; 6];
                for j in 0..window {
                    let column = winograd_math::input_1d::<M, Lanes>(std::array::from_fn(|i| d[i][j]));
                    for (i, value) in column.into_iter().enumerate().take(window) {
                        cols[i][j] = value;
                    }
                }
                for (i, row) in cols.iter().enumerate().take(window) {
                    let transformed = winograd_math::input_1d::<M, Lanes>(*row);
                    for (j, value) in transformed.into_iter().enumerate().take(window) {
                        let xi = i * window + j;
                        value.store(&mut v[((xi * in_blocks + icb) * self.stride + t) * LANES..]);
                    }
                }
            }
        }
    }

    /// `M[ξ] = U[ξ] · V[ξ]` for every point and the `blocks` output blocks from `first`, on the
    /// microkernel: all the group's blocks by up to a tile's pixels of tiles per call.
    fn products(&self, points: usize, v: &[f32], m: &mut [f32], first: usize, blocks: usize) {
        let weights = self.weights;
        let in_blocks = blocked::blocks(weights.geometry.in_channels);
        let row = self.stride * LANES;
        let pixels = self.isa.tile_pixels(blocks);
        let mut runs = Vec::with_capacity(in_blocks);
        for xi in 0..points {
            runs.clear();
            runs.extend(
                (0..in_blocks).map(|icb| ((xi * in_blocks + icb) * LANES * LANES, (xi * in_blocks + icb) * row)),
            );
            for t in (0..self.tiles).step_by(pixels) {
                let tile = Tile {
                    shape: TileShape {
                        blocks,
                        pixels: pixels.min(self.tiles - t),
                    },
                    runs: &runs,
                    depth: LANES,
                    w_block_stride: weights.block_stride,
                    x_pixel_stride: LANES,
                    x_depth_stride: 1,
                    c_offset: xi * blocks * row + t * LANES,
                    c_block_stride: row,
                    epilogue: Epilogue::default(),
                };
                microkernel::run(
                    self.isa,
                    &tile,
                    &weights.weights[first * weights.block_stride..],
                    &v[t * LANES..],
                    m,
                );
            }
        }
    }

    /// `Y = Aᵀ M A` plus the bias, rectified when asked, for every tile and the `blocks` output blocks
    /// from `first` (whose products `m` holds), into the output images (the part of each tile inside
    /// the map).
    #[inline(always)]
    fn output_transform<const M: usize>(&self, m: &[f32], first: usize, blocks: usize) {
        let g = &self.weights.geometry;
        let window = M + 2;
        let (oh, ow) = (g.h.output, g.w.output);
        let plane = oh * ow * LANES;
        for t in 0..self.tiles {
            let (n, ty, tx) = self.locate(t);
            for b in 0..blocks {
                let ob = first + b;
                let mut rows = [[Lanes::ZERO; 6]; 4];
                for j in 0..window {
                    let column = winograd_math::output_1d::<M, Lanes>(std::array::from_fn(|i| {
                        if i < window {
                            Lanes::load(&m[(((i * window + j) * blocks + b) * self.stride + t) * LANES..])
                        } else {
                            Lanes::ZERO
                        }
                    }));
                    for (i, value) in column.into_iter().enumerate().take(M) {
                        rows[i][j] = value;
                    }
                }
                let bias = Lanes::load(&self.weights.bias[ob * LANES..]);
                for (i, row) in rows.iter().enumerate().take(M) {
                    let oy = ty * M + i;
                    if oy >= oh {
                        break;
                    }
                    let outputs = winograd_math::output_1d::<M, Lanes>(*row);
                    for (j, value) in outputs.into_iter().enumerate().take(M) {
                        let ox = tx * M + j;
                        if ox >= ow {
                            break;
                        }
                        let mut value = value + bias;
                        if self.relu {
                            value = Lanes(value.0.map(|v| v.max(0.0)));
                        }
                        self.out.store(n, ob * plane + (oy * ow + ox) * LANES, value);
                    }
                }
            }
        }
    }
}
