//! Winograd F(m×m, 3×3), m = 2 or 4 ([`crate::ops::conv::winograd_math`]), on the blocked channel layout and
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
//!
//! Training runs the same machinery twice more:
//!
//! - the input gradient is the stride-1 convolution of `dy` with the kernels flipped and their input
//!   and output channels swapped ([`WinogradWeights::for_input_grad`]), through the same three stages,
//!   adding into `dx`;
//! - the weight gradient is computed in the Winograd domain: for each chunk of tiles, the input
//!   transform `V` and the output gradient carried back through `Aᵀ` (`dM = A dY Aᵀ`), then per point
//!   `dU[ξ] += dM[ξ] · V[ξ]ᵀ` on the microkernel (the reduction runs over the tiles), and once at the
//!   end `dw += Gᵀ dU G` ([`WinogradWeights::add_weight_grad_images`]).

use crate::blocked;
use crate::geometry::Axis;
use crate::kernels::vectorize;
use crate::microkernel::{self, Epilogue, Isa, LANES, Tile, TileShape};
use crate::ops::conv::ConvGeometry;
use crate::ops::conv::winograd_math::{self, Lanes};
use crate::parallel::for_each_part;
use crate::tensor::{Images, ImagesMut};
use crate::workspace::{Workspace, WorkspaceSize};
use rayon::prelude::*;

/// Bytes of a block's transformed input and one group's products the tile-block size aims for: within
/// L2 (1 MiB or more on the machines we run), with room for the weights streaming through. On
/// googlenet-d2l's 3×3 layers at batch 128 (`cargo bench --bench conv -- 3x3/1`, two runs each), 256
/// KiB, 512 KiB and 1 MiB blocks ran within the spread between runs (F(4,3) on 12×12: 330-400,
/// 340-520, 320-400 GF/s of direct FLOPs); the weights are reused once per tile of a block, so
/// blocks much smaller lose.
const BLOCK_BYTES: usize = 512 * 1024;
/// The most tiles a block holds.
const MAX_TILES: usize = 96;
/// Bytes of one chunk's transformed inputs and output gradients in the weight gradient: the chunk's
/// tiles are the reduction depth of every microkernel call, so deeper chunks store the gradient's
/// accumulators less often; 4 MiB stays within the L3 of the machines we run.
const WEIGHT_GRAD_BYTES: usize = 4 * 1024 * 1024;

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
///
/// And not where a kernel tap reads only padding (a 1×1 map with padding 1): that tap's exact gradient
/// is 0, which the direct path computes exactly and Winograd's transforms round to noise (1e-8 of the
/// others), and Adam turns noise into full-size steps.
pub fn choose_tile(g: &ConvGeometry, fast: bool) -> Option<usize> {
    if !eligible(g) || g.in_channels < LANES || g.out_channels < LANES || !every_tap_reads_the_image(g) {
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

/// Whether each of `g`'s kernel taps reads an image pixel for some output pixel (stride 1).
fn every_tap_reads_the_image(g: &ConvGeometry) -> bool {
    [&g.h, &g.w].iter().all(|a| {
        (0..a.kernel as isize).all(|k| {
            // Output y reads input y + k - pad_lo: some y in 0..output must land in 0..input.
            let first = (a.pad_lo as isize - k).max(0);
            let last = (a.output as isize - 1).min(a.input as isize - 1 + a.pad_lo as isize - k);
            first <= last
        })
    })
}

/// The transform's points (products per tile and channel pair) for output tiles of `tile` a side.
fn points(tile: usize) -> usize {
    (tile + 2) * (tile + 2)
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
    let per_tile = points(tile) * (in_blocks + group) * LANES * 4;
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
    points(tile) * (blocked::blocks(g.in_channels) + group) * tiles * LANES
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

/// Tiles per chunk of [`WinogradWeights::add_weight_grad_images`]: from the geometry alone (not the
/// batch or the thread count), so the order of the sums, and with it every bit of the gradient, is
/// fixed.
fn weight_grad_chunk(g: &ConvGeometry, tile: usize) -> usize {
    let per_tile = points(tile) * (blocked::blocks(g.in_channels) + blocked::blocks(g.out_channels)) * LANES * 4;
    (WEIGHT_GRAD_BYTES / per_tile).clamp(16, 512)
}

/// The workspace [`WinogradWeights::add_weight_grad_images`] takes over `g` with tiles of `tile` a side:
/// the gradient in the Winograd domain, and one chunk's transformed tiles.
pub fn weight_grad_workspace(g: &ConvGeometry, tile: usize) -> WorkspaceSize {
    let points = points(tile);
    let (in_blocks, out_blocks) = (blocked::blocks(g.in_channels), blocked::blocks(g.out_channels));
    WorkspaceSize {
        partials: points * out_blocks * in_blocks * LANES * LANES,
        shared: points * (in_blocks + out_blocks) * weight_grad_chunk(g, tile) * LANES,
        ..WorkspaceSize::default()
    }
}

/// The stride-1 convolution whose output is `g`'s input gradient: `g`'s output gradient convolved
/// with the flipped kernels, input and output channels swapped, with the padding that makes its
/// output the size of `g`'s input (`2 - pad` a side).
pub fn input_grad_geometry(g: &ConvGeometry) -> ConvGeometry {
    let swap = |a: Axis| Axis {
        input: a.output,
        output: a.input,
        pad_lo: 2 - a.pad_lo,
        pad_hi: 2 - a.pad_hi,
        ..a
    };
    ConvGeometry {
        batch: g.batch,
        in_channels: g.out_channels,
        out_channels: g.in_channels,
        h: swap(g.h),
        w: swap(g.w),
    }
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
    /// Whether these weights compute the input gradient ([`WinogradWeights::for_input_grad`]).
    input_grad: bool,
}

impl WinogradWeights {
    /// Transforms PyTorch-layout weights `[out, in, 3, 3]` (and a bias) for `g` with output tiles of
    /// `tile` (2 or 4) a side. Panics unless [`eligible`].
    pub fn new(g: &ConvGeometry, tile: usize, w: &[f32], b: Option<&[f32]>) -> WinogradWeights {
        let mut packed = WinogradWeights::allocate(g, tile, false);
        packed.repack(w, b);
        packed
    }

    /// The weights [`WinogradWeights::add_input_grad_images`] runs for convolution `g` (its PyTorch-layout
    /// weights `w`): the kernels flipped, input and output channels swapped, over
    /// [`input_grad_geometry`].
    pub fn for_input_grad(g: &ConvGeometry, tile: usize, w: &[f32]) -> WinogradWeights {
        let mut packed = WinogradWeights::allocate(&input_grad_geometry(g), tile, true);
        packed.repack(w, None);
        packed
    }

    /// Zeroed buffers for `g`'s weights.
    fn allocate(g: &ConvGeometry, tile: usize, input_grad: bool) -> WinogradWeights {
        assert!(
            eligible(g),
            "Winograd needs a 3x3, stride-1, undilated convolution, found {g}"
        );
        assert!(
            tile == 2 || tile == 4,
            "Winograd output tiles are 2 or 4 a side, not {tile}"
        );
        let block_stride = microkernel::block_stride(points(tile) * blocked::blocks(g.in_channels) * LANES * LANES);
        WinogradWeights {
            geometry: *g,
            tile,
            block_stride,
            weights: vec![0.0; blocked::blocks(g.out_channels) * block_stride],
            bias: vec![0.0; blocked::blocks(g.out_channels) * LANES],
            input_grad,
        }
    }

    /// Transforms new values of the same weights (after an optimizer step; PyTorch's layout, the
    /// convolution's own for input-gradient weights) into the existing buffers.
    pub fn repack(&mut self, w: &[f32], b: Option<&[f32]>) {
        let g = self.geometry;
        let (inputs, outputs) = (g.in_channels, g.out_channels);
        assert_eq!(w.len(), outputs * inputs * 9, "conv weights [out, in, 3, 3]");
        let (points, in_blocks) = (self.points(), blocked::blocks(inputs));
        let (tile, input_grad) = (self.tile, self.input_grad);
        // Kernel (o, c) of the convolution these weights run: for the input gradient, kernel (c, o) of
        // the forward convolution, flipped.
        let kernel_of = |o: usize, c: usize| -> [f32; 9] {
            if input_grad {
                let k = &w[(c * outputs + o) * 9..][..9];
                std::array::from_fn(|t| k[8 - t])
            } else {
                w[(o * inputs + c) * 9..][..9].try_into().expect("3x3")
            }
        };
        self.weights
            .par_chunks_mut(self.block_stride)
            .enumerate()
            .for_each(|(ob, block)| {
                block.fill(0.0);
                for oc in 0..LANES.min(outputs.saturating_sub(ob * LANES)) {
                    let o = ob * LANES + oc;
                    for c in 0..inputs {
                        let k = kernel_of(o, c);
                        let u = if tile == 4 {
                            winograd_math::kernel::<4>(&k)
                        } else {
                            winograd_math::kernel::<2>(&k)
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
        points(self.tile)
    }

    /// `y = conv(x, w) + b`, rectified when `relu`, for blocked images `x` into blocked images `y`
    /// (neither with a halo), with `isa`'s microkernel.
    pub fn forward_images(&self, x: Images<'_>, relu: bool, y: &mut ImagesMut<'_>, ws: &mut Workspace, isa: Isa) {
        assert!(!self.input_grad, "input-gradient weights run add_input_grad_images");
        self.run_tiles(x, Finish { relu, add: false }, y, ws, isa);
    }

    /// `dx += the input gradient of the convolution` for the blocked output gradient `dy` (weights from
    /// [`WinogradWeights::for_input_grad`]; neither with a halo).
    pub fn add_input_grad_images(&self, dy: Images<'_>, dx: &mut ImagesMut<'_>, ws: &mut Workspace, isa: Isa) {
        assert!(self.input_grad, "the forward convolution's weights run forward_images");
        self.run_tiles(dy, Finish { relu: false, add: true }, dx, ws, isa);
    }

    /// `dw += the weight gradient` (PyTorch's `[out, in, 3, 3]`) of the convolution these weights run,
    /// for blocked inputs `x` and output gradients `dy` (neither with a halo), in the Winograd domain:
    /// chunk after chunk of tiles ([`weight_grad_chunk`]), `V` and `dM = A dY Aᵀ` of the chunk's tiles,
    /// then per point `dU[ξ] += dM[ξ] · V[ξ]ᵀ` on the microkernel; finally `dw += Gᵀ dU G` in float64.
    /// Every sum runs in an order fixed by the geometry, whatever the thread count.
    pub fn add_weight_grad_images(&self, x: Images<'_>, dy: Images<'_>, dw: &mut [f32], ws: &mut Workspace, isa: Isa) {
        assert!(
            !self.input_grad,
            "the weight gradient runs on the forward convolution's weights"
        );
        let g = &self.geometry;
        let (inputs, outputs) = (g.in_channels, g.out_channels);
        assert_eq!(dw.len(), outputs * inputs * 9, "conv weight gradient [out, in, 3, 3]");
        let total = tiles_per_image(g, self.tile) * x.count();
        if total == 0 {
            return;
        }
        let (in_blocks, out_blocks) = (blocked::blocks(inputs), blocked::blocks(outputs));
        let (tile, points) = (self.tile, self.points());
        let chunk = weight_grad_chunk(g, tile);
        // `V[icb][ξ][t]`, `dM[ob][ξ][t]` (16 lanes each) and `dU[ξ][ob][input channel][16 outputs]`.
        let row = chunk * LANES;
        let per_block = points * row;
        let du_block = in_blocks * LANES * LANES;
        let size = weight_grad_workspace(g, tile);
        let (du, shared) = ws.partials_and_shared(size.partials, size.shared);
        du.fill(0.0);
        let (v, dm) = shared.split_at_mut(in_blocks * per_block);
        for first in (0..total).step_by(chunk) {
            let tiles = chunk.min(total - first);
            let chunk_tiles = ChunkTiles { g, first, tiles, row };
            rayon::join(
                || {
                    v.par_chunks_mut(per_block)
                        .enumerate()
                        .for_each(|(icb, v)| chunk_tiles.transform(tile, Side::Inputs, x, icb, v))
                },
                || {
                    dm.par_chunks_mut(per_block)
                        .enumerate()
                        .for_each(|(ob, dm)| chunk_tiles.transform(tile, Side::Gradients, dy, ob, dm))
                },
            );
            let (v, dm) = (&*v, &*dm);
            // One task per point and group of output blocks, each owning its part of `dU`; every sum
            // runs over the chunk's tiles in order however the tasks are cut.
            let group = group_blocks(isa, out_blocks);
            du.par_chunks_mut(out_blocks * du_block)
                .enumerate()
                .for_each(|(xi, du)| {
                    du.par_chunks_mut(group * du_block).enumerate().for_each(|(gi, du)| {
                        let blocks = du.len() / du_block;
                        // The tile's "pixels" are input channels of one block.
                        let pixels = isa.tile_pixels(blocks).min(LANES);
                        let dm = &dm[(gi * group * points + xi) * row..];
                        for icb in 0..in_blocks {
                            let v = &v[(icb * points + xi) * row..];
                            for ic in (0..LANES).step_by(pixels) {
                                let tile = Tile {
                                    shape: TileShape {
                                        blocks,
                                        pixels: pixels.min(LANES - ic),
                                    },
                                    runs: &[(0, ic)],
                                    depth: tiles,
                                    w_block_stride: per_block,
                                    x_pixel_stride: 1,
                                    x_depth_stride: LANES,
                                    c_offset: (icb * LANES + ic) * LANES,
                                    c_block_stride: du_block,
                                    epilogue: Epilogue {
                                        accumulate: true,
                                        ..Epilogue::default()
                                    },
                                };
                                microkernel::run(isa, &tile, dm, v, du);
                            }
                        }
                    })
                });
        }
        let du = &*du;
        dw.par_chunks_mut(inputs * 9).enumerate().for_each(|(o, dw)| {
            let (ob, oc) = (o / LANES, o % LANES);
            for (c, dw) in dw.chunks_exact_mut(9).enumerate() {
                let u: [f64; 36] = std::array::from_fn(|xi| {
                    if xi < points {
                        f64::from(du[(xi * out_blocks + ob) * du_block + c * LANES + oc])
                    } else {
                        0.0
                    }
                });
                let k = if tile == 4 {
                    winograd_math::kernel_adjoint::<4>(&u)
                } else {
                    winograd_math::kernel_adjoint::<2>(&u)
                };
                for (d, k) in dw.iter_mut().zip(k) {
                    *d += k as f32;
                }
            }
        });
    }

    /// The three stages over every block of tiles: `x` through the convolution into `y`, finished as
    /// `finish` says.
    fn run_tiles(&self, x: Images<'_>, finish: Finish, y: &mut ImagesMut<'_>, ws: &mut Workspace, isa: Isa) {
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
                        finish,
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

    /// Stores 16 lanes at `offset` of image `n`, or adds them to what is there when `add`.
    #[inline(always)]
    fn store(&self, n: usize, offset: usize, value: Lanes, add: bool) {
        let (ptr, len) = self.images[n];
        assert!(offset + LANES <= len, "output offset {offset} past an image of {len}");
        // SAFETY: in bounds (checked above) of a live image slice; see the `Sync` impl for why no other
        // thread reads or writes these 16 values.
        unsafe {
            let at = ptr.add(offset);
            let value = if add {
                value + Lanes(std::ptr::read_unaligned(at as *const [f32; LANES]))
            } else {
                value
            };
            std::ptr::copy_nonoverlapping(value.0.as_ptr(), at, LANES)
        };
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
    finish: Finish,
    isa: Isa,
}

/// What the output transform does with its values besides the bias.
#[derive(Debug, Clone, Copy)]
struct Finish {
    /// `max(·, 0)`.
    relu: bool,
    /// Add to the output instead of storing (a gradient adding into its buffer).
    add: bool,
}

impl Step<'_> {
    fn run<const M: usize>(&self, region: &mut [f32]) {
        let g = &self.weights.geometry;
        let (in_blocks, out_blocks) = (blocked::blocks(g.in_channels), blocked::blocks(g.out_channels));
        let points = points(M);
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

    /// `V[ξ][icb][t] = (Bᵀ d B)[ξ]` for every tile `t` of the block and input block `icb`.
    #[inline(always)]
    fn input_transform<const M: usize>(&self, v: &mut [f32]) {
        let g = &self.weights.geometry;
        let window = M + 2;
        let in_blocks = blocked::blocks(g.in_channels);
        for t in 0..self.tiles {
            let (n, ty, tx) = locate(g, M, self.first + t);
            let image = self.x.get(n);
            for icb in 0..in_blocks {
                let transformed = input_tile::<M>(g, image, icb, ty, tx);
                for (i, row) in transformed.iter().enumerate().take(window) {
                    for (j, value) in row.iter().enumerate().take(window) {
                        value.store(&mut v[(((i * window + j) * in_blocks + icb) * self.stride + t) * LANES..]);
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
            let (n, ty, tx) = locate(g, M, self.first + t);
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
                        if self.finish.relu {
                            value = Lanes(value.0.map(|v| v.max(0.0)));
                        }
                        self.out
                            .store(n, ob * plane + (oy * ow + ox) * LANES, value, self.finish.add);
                    }
                }
            }
        }
    }
}

/// Image, tile row and tile column of tile `global` of a batch (image after image, row-major in each)
/// of `g`'s outputs cut into tiles of `m` a side.
#[inline(always)]
fn locate(g: &ConvGeometry, m: usize, global: usize) -> (usize, usize, usize) {
    let tiles_w = g.w.output.div_ceil(m);
    let per_image = g.h.output.div_ceil(m) * tiles_w;
    let (n, within) = (global / per_image, global % per_image);
    (n, within / tiles_w, within % tiles_w)
}

/// `Bᵀ d B` for the window of output tile (`ty`, `tx`) in input block `icb` of the blocked `image`
/// (zeros where the window leaves the image, so no padded copy): `(M + 2)²` vectors.
#[inline(always)]
fn input_tile<const M: usize>(g: &ConvGeometry, image: &[f32], icb: usize, ty: usize, tx: usize) -> [[Lanes; 6]; 6] {
    let window = M + 2;
    let (h, w) = (g.h.input as isize, g.w.input as isize);
    let plane = g.h.input * g.w.input * LANES;
    let channels = &image[icb * plane..][..plane];
    let (y0, x0) = (
        (ty * M) as isize - g.h.pad_lo as isize,
        (tx * M) as isize - g.w.pad_lo as isize,
    );
    let inside = y0 >= 0 && x0 >= 0 && y0 + window as isize <= h && x0 + window as isize <= w;
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
    std::array::from_fn(|i| winograd_math::input_1d::<M, Lanes>(cols[i]))
}

/// `A dY Aᵀ` for output tile (`ty`, `tx`) of output block `ob` of the blocked output gradient `image`
/// (zeros where the tile leaves the map): the gradient of the tile's `(M + 2)²` products.
#[inline(always)]
fn gradient_tile<const M: usize>(g: &ConvGeometry, image: &[f32], ob: usize, ty: usize, tx: usize) -> [[Lanes; 6]; 6] {
    let (oh, ow) = (g.h.output, g.w.output);
    let plane = oh * ow * LANES;
    let channels = &image[ob * plane..][..plane];
    let mut dy = [[Lanes::ZERO; 4]; 4];
    for (i, row) in dy.iter_mut().enumerate().take(M) {
        let oy = ty * M + i;
        for (j, value) in row.iter_mut().enumerate().take(M) {
            let ox = tx * M + j;
            if oy < oh && ox < ow {
                *value = Lanes::load(&channels[(oy * ow + ox) * LANES..]);
            }
        }
    }
    // A dY (columns), then (A dY) Aᵀ (rows).
    let mut cols = [[Lanes::ZERO; 4]; 6];
    for j in 0..M {
        let column = winograd_math::output_adjoint_1d::<M, Lanes>(std::array::from_fn(|i| dy[i][j]));
        for (i, value) in column.into_iter().enumerate().take(M + 2) {
            cols[i][j] = value;
        }
    }
    std::array::from_fn(|i| winograd_math::output_adjoint_1d::<M, Lanes>(cols[i]))
}

/// Which tiles [`ChunkTiles::transform`] carries into the Winograd domain.
#[derive(Debug, Clone, Copy)]
enum Side {
    /// The convolution's input windows, through `Bᵀ · B`.
    Inputs,
    /// The output gradient's tiles, through `A · Aᵀ`.
    Gradients,
}

/// One chunk of the weight gradient's tiles: tiles `first..first + tiles` of the batch, each
/// transformed block holding `row` values per point.
struct ChunkTiles<'a> {
    g: &'a ConvGeometry,
    first: usize,
    tiles: usize,
    row: usize,
}

impl ChunkTiles<'_> {
    /// For every tile of the chunk, into `out`: `V[ξ][t] = (Bᵀ d B)[ξ]` of input block `block` of the
    /// images (`Side::Inputs`), or `dM[ξ][t] = (A dY Aᵀ)[ξ]` of output block `block` of the output
    /// gradients (`Side::Gradients`).
    fn transform(&self, tile: usize, side: Side, images: Images<'_>, block: usize, out: &mut [f32]) {
        struct Run<'s, 'a, const M: usize>(&'s ChunkTiles<'a>, Side, Images<'s>, usize, &'s mut [f32]);
        impl<const M: usize> pulp::WithSimd for Run<'_, '_, M> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _: S) {
                let Run(chunk, side, images, block, out) = self;
                for t in 0..chunk.tiles {
                    let (n, ty, tx) = locate(chunk.g, M, chunk.first + t);
                    let transformed = match side {
                        Side::Inputs => input_tile::<M>(chunk.g, images.get(n), block, ty, tx),
                        Side::Gradients => gradient_tile::<M>(chunk.g, images.get(n), block, ty, tx),
                    };
                    chunk.store::<M>(&transformed, t, out);
                }
            }
        }
        match tile {
            4 => vectorize(Run::<4>(self, side, images, block, out)),
            _ => vectorize(Run::<2>(self, side, images, block, out)),
        }
    }

    /// Stores tile `t`'s `(M + 2)²` transformed vectors at their points.
    #[inline(always)]
    fn store<const M: usize>(&self, transformed: &[[Lanes; 6]; 6], t: usize, out: &mut [f32]) {
        let window = M + 2;
        for (i, row) in transformed.iter().enumerate().take(window) {
            for (j, value) in row.iter().enumerate().take(window) {
                value.store(&mut out[((i * window + j) * self.row) + t * LANES..]);
            }
        }
    }
}
