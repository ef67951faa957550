//! Winograd F(4×4, 3×3) for 3×3, stride-1, undilated convolutions (Lavin & Gray 2016, with the
//! interpolation points 0, ±1, ±2 and ∞). Each 4×4 output tile comes from a 6×6 input tile:
//!
//! ```text
//! Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//! ```
//!
//! Summed over input channels, the element-wise product becomes 36 independent matrix products
//! `M[ξ] (out × tiles) = U[ξ] (out × in) · V[ξ] (in × tiles)`, one per point ξ of the 6×6 transform
//! domain: 36 multiplies per tile and channel pair instead of 144. The transforms cost a few adds per
//! element and are linear in the channel counts, not their product.
//!
//! The input gradient of a stride-1 3×3 convolution is again one (over the output gradient, with the
//! weights flipped and in/out swapped, and the padding mirrored), so the same code serves backward.
//!
//! Work is done in chunks of images whose tiles together make one GEMM width. With at least as many
//! chunks as threads the chunks run in parallel, each on one thread; otherwise one chunk at a time,
//! with the transforms split across channels and the 36 products across threads.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::kernels::vectorize;
use crate::matmul::{MatMut, MatRef, Threads, matmul};
use crate::ops::conv::{ConvGeometry, Fused, GradOperands, Operands, winograd_math};
use crate::parallel::{for_each_chunk_mut, for_each_part};
use crate::tensor::{Images, ImagesMut};
use crate::workspace::{Workspace, WorkspaceSize};

/// Output tile side.
const TILE: usize = 4;
/// Input tile side: the output tile plus the kernel's reach.
const WINDOW: usize = TILE + 2;
/// Points of the transform domain, and so GEMMs per chunk.
const POINTS: usize = WINDOW * WINDOW;
/// Tiles per chunk the image grouping aims for: wide enough for an efficient GEMM, small enough that
/// a chunk's transformed input and output stay in cache.
const TARGET_TILES: usize = 96;

/// True when Winograd can compute this geometry: a 3×3 kernel, stride 1, no dilation, and padding of
/// at most 2 on every side (so the mirrored backward geometry is valid too).
pub(in crate::ops::conv) fn eligible(g: &ConvGeometry) -> bool {
    [&g.h, &g.w]
        .iter()
        .all(|a| a.kernel == 3 && a.stride == 1 && a.dilation == 1 && a.pad_lo <= 2 && a.pad_hi <= 2)
}

/// The workspace a forward and an input-gradient pass over `g` take: the transformed weights, and a
/// chunk's transformed tiles and products per part.
pub(in crate::ops::conv) fn workspace(g: &ConvGeometry) -> WorkspaceSize {
    // Forward tiles the output; the input gradient tiles the input (with in and out swapped, which
    // leaves the chunk's scratch the same).
    let forward = tiles(g).0 * tiles(g).1;
    let backward = g.h.input.div_ceil(TILE) * g.w.input.div_ceil(TILE);
    let region = |tiles| chunking(g, tiles, g.batch).1;
    WorkspaceSize {
        shared: POINTS * g.in_channels * g.out_channels,
        ..WorkspaceSize::regions(region(forward).max(region(backward)))
    }
}

/// Images per chunk, and the chunk's scratch (its transformed input and its 36 products), for images
/// of `tiles` tiles each in a batch of `batch`.
fn chunking(g: &ConvGeometry, tiles: usize, batch: usize) -> (usize, usize) {
    let per_chunk = (TARGET_TILES / tiles.max(1)).clamp(1, batch.max(1));
    (per_chunk, POINTS * (g.in_channels + g.out_channels) * per_chunk * tiles)
}

/// `y = conv(x, w)`, with `fused`'s bias and ReLU applied as each output tile is written.
pub(in crate::ops::conv) fn forward(g: &ConvGeometry, op: Operands<'_>, y: &mut ImagesMut<'_>, ws: &mut Workspace) {
    let Operands {
        x,
        w,
        fused: Fused { bias: b, relu },
    } = op;
    debug_assert!(eligible(g));
    let (inputs, outputs) = (g.in_channels, g.out_channels);
    let (u, regions) = ws.shared_and_regions(POINTS * outputs * inputs, region_len(g, x.count()));
    transform_weights(w, outputs, inputs, u);
    run(g, x, u, b, y, Epilogue::Write { relu }, regions);
}

/// Adds the input gradient of the convolution `g` into `dx`: a Winograd convolution of `dy` with the
/// flipped, transposed weights and the mirrored padding.
pub(crate) fn backward_input(g: &ConvGeometry, op: GradOperands<'_>, dx: &mut ImagesMut<'_>, ws: &mut Workspace) {
    let GradOperands { w, dy } = op;
    debug_assert!(eligible(g));
    let (inputs, outputs) = (g.in_channels, g.out_channels);
    let back = g
        .input_grad_geometry()
        .expect("a Winograd-eligible geometry (3×3, stride 1, padding ≤ 2) has a mirrored one");
    let (u, regions) = ws.shared_and_regions(POINTS * outputs * inputs, region_len(&back, dy.count()));
    // U of the backward convolution, from w'[c][o][ky][kx] = w[o][c][2-ky][2-kx], transformed straight
    // from `w` without materializing w'.
    u.par_chunks_mut(POINTS * outputs).enumerate().for_each(|(c, u_c)| {
        for o in 0..outputs {
            let k = &w[(o * inputs + c) * 9..][..9];
            let flipped = [k[8], k[7], k[6], k[5], k[4], k[3], k[2], k[1], k[0]];
            for (xi, value) in transform_kernel(&flipped).into_iter().enumerate() {
                u_c[xi * outputs + o] = value;
            }
        }
    });
    run(&back, dy, u, None, dx, Epilogue::Add, regions);
}

/// The region one part of [`run`] takes over `g` for a batch of `batch`.
fn region_len(g: &ConvGeometry, batch: usize) -> usize {
    let (th, tw) = tiles(g);
    chunking(g, th * tw, batch).1
}

/// `U[o][ξ][c] = (G w[o][c] Gᵀ)[ξ]`: per output channel, one row of every point's weight matrix.
fn transform_weights(w: &[f32], outputs: usize, inputs: usize, u: &mut [f32]) {
    debug_assert_eq!(w.len(), outputs * inputs * 9);
    u.par_chunks_mut(POINTS * inputs).enumerate().for_each(|(o, u_o)| {
        for (c, kernel) in w[o * inputs * 9..][..inputs * 9].chunks_exact(9).enumerate() {
            let k: &[f32; 9] = kernel.try_into().expect("3x3 kernels");
            for (xi, value) in transform_kernel(k).into_iter().enumerate() {
                u_o[xi * inputs + c] = value;
            }
        }
    });
}

/// `G g Gᵀ` for one 3×3 kernel ([`winograd_math::kernel`]).
fn transform_kernel(k: &[f32; 9]) -> [f32; POINTS] {
    winograd_math::kernel::<TILE>(k)
}

/// `Bᵀ d` for one 6-vector ([`winograd_math::input_1d`]).
#[inline(always)]
fn input_1d(d: [f32; 6]) -> [f32; 6] {
    winograd_math::input_1d::<TILE, f32>(d)
}

/// `Aᵀ m` for one 6-vector ([`winograd_math::output_1d`]).
#[inline(always)]
fn output_1d(m: [f32; 6]) -> [f32; 4] {
    winograd_math::output_1d::<TILE, f32>(m)
}

/// What the output transform does with each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Epilogue {
    /// Overwrite the output with `value + bias`, rectified when `relu`.
    Write { relu: bool },
    /// Add `value` to the output (the input gradient accumulates).
    Add,
}

/// A 1-D transform `f` (`N` values to `M`) on `BLOCK` tiles at once: `out[r][b] = f(v_b)[r]` with
/// `v_b[i] = columns[i][b]`. Written lane by lane so the loop over `b` vectorizes.
#[inline(always)]
fn lanes<const N: usize, const M: usize>(
    columns: [&[f32; BLOCK]; N],
    f: impl Fn([f32; N]) -> [f32; M],
) -> [[f32; BLOCK]; M] {
    let mut out = [[0.0f32; BLOCK]; M];
    for b in 0..BLOCK {
        let r = f(std::array::from_fn(|i| columns[i][b]));
        for (o, v) in out.iter_mut().zip(r) {
            o[b] = v;
        }
    }
    out
}

/// Tiles of a geometry: `(tile rows, tile columns)`.
fn tiles(g: &ConvGeometry) -> (usize, usize) {
    (g.h.output.div_ceil(TILE), g.w.output.div_ceil(TILE))
}

/// Runs the transformed-weight convolution over the batch, chunk by chunk, in the static parts
/// [`for_each_part`] cuts, each in its own region of `regions`.
fn run(
    g: &ConvGeometry,
    x: Images<'_>,
    u: &[f32],
    b: Option<&[f32]>,
    y: &mut ImagesMut<'_>,
    epilogue: Epilogue,
    regions: &mut [f32],
) {
    let batch = x.count();
    if batch == 0 || g.output_pixels() == 0 {
        return;
    }
    let (th, tw) = tiles(g);
    let (per_chunk, region_len) = chunking(g, th * tw, batch);
    let mut outs: Vec<&mut [f32]> = y.iter_mut().map(|(_, img)| img).collect();
    for_each_part(&mut outs, per_chunk, regions, region_len, |first, run, s, threads| {
        for (c, outs) in run.chunks_mut(per_chunk).enumerate() {
            chunk(g, x, first + c * per_chunk, outs, u, b, s, epilogue, threads);
        }
    });
}

/// One chunk: images `first..first + outs.len()` of `x` into `outs`. [`Threads::Pool`] splits the
/// chunk's own work across the pool (when chunks are not already run in parallel).
#[allow(clippy::too_many_arguments)]
fn chunk(
    g: &ConvGeometry,
    x: Images<'_>,
    first: usize,
    outs: &mut [&mut [f32]],
    u: &[f32],
    b: Option<&[f32]>,
    scratch: &mut [f32],
    epilogue: Epilogue,
    threads: Threads,
) {
    let (inputs, outputs) = (g.in_channels, g.out_channels);
    let (th, tw) = tiles(g);
    let n = outs.len() * th * tw;
    let (v, m) = scratch.split_at_mut(POINTS * inputs * n);
    let m = &mut m[..POINTS * outputs * n];

    // V[c][ξ][t]: each channel's transformed tiles, contiguous per channel so channels split cleanly.
    let transform_channel = |c: usize, v_c: &mut [f32]| {
        for k in 0..outs.len() {
            let plane = &x.get(first + k)[c * g.h.input * g.w.input..][..g.h.input * g.w.input];
            input_tiles(g, plane, v_c, k * th * tw, n);
        }
    };
    for_each_chunk_mut(v, POINTS * n, threads, transform_channel);

    // M[ξ] = U[ξ] · V[ξ], with U[ξ] (out × in, row stride 36·in) and V[ξ] (in × tiles, row stride
    // 36·tiles) read in place.
    let product = |xi: usize, m_xi: &mut [f32]| {
        matmul(
            MatMut::row_major(m_xi, outputs, n),
            MatRef::strided(&u[xi * inputs..], outputs, inputs, POINTS * inputs, 1),
            MatRef::strided(&v[xi * n..], inputs, n, POINTS * n, 1),
            false,
            Threads::One,
        );
    };
    for_each_chunk_mut(m, outputs * n, threads, product);

    // Y = Aᵀ M A per tile, plus the bias, channel by channel.
    let planes = g.output_pixels();
    let m = &*m;
    for (k, out) in outs.iter_mut().enumerate() {
        let write = |o: usize, plane: &mut [f32]| {
            let bias = b.map_or(0.0, |b| b[o]);
            output_tiles(g, m, o * n + k * th * tw, outputs * n, plane, bias, epilogue);
        };
        for_each_chunk_mut(out, planes, threads, write);
    }
}

/// Tiles transformed together along a tile row: the vertical half of each transform runs over this
/// many tiles at once, as contiguous vectors.
const BLOCK: usize = 16;

/// Transforms every tile of one input channel plane into `v_c[ξ * n + first_tile + t]`.
///
/// Per block of tiles along a tile row: the horizontal transform (`d B`) of each of the 6 input rows,
/// tile by tile, into `rows[i][j][tile]`; then the vertical one (`Bᵀ ·`) across the 6 rows, for all
/// tiles of the block at once, straight into the 36 point rows of `v_c`.
fn input_tiles(g: &ConvGeometry, plane: &[f32], v_c: &mut [f32], first_tile: usize, n: usize) {
    struct Kernel<'a>(&'a ConvGeometry, &'a [f32], &'a mut [f32], usize, usize);
    impl WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) {
            input_tiles_inline(self.0, self.1, self.2, self.3, self.4)
        }
    }
    vectorize(Kernel(g, plane, v_c, first_tile, n));
}

// `b` walks the lane dimension of several arrays at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_tiles_inline(g: &ConvGeometry, plane: &[f32], v_c: &mut [f32], first_tile: usize, n: usize) {
    let (th, tw) = tiles(g);
    let (h, w) = (g.h.input, g.w.input);
    let mut points = v_c.chunks_exact_mut(n);
    let points: [&mut [f32]; POINTS] = std::array::from_fn(|_| points.next().expect("36 point rows"));
    let mut rows = [[[0.0f32; BLOCK]; WINDOW]; WINDOW];
    for ty in 0..th {
        for block_start in (0..tw).step_by(BLOCK) {
            let count = BLOCK.min(tw - block_start);
            for (i, row) in rows.iter_mut().enumerate() {
                let iy = (ty * TILE + i).checked_sub(g.h.pad_lo).filter(|&iy| iy < h);
                let Some(iy) = iy else {
                    row.iter_mut().for_each(|r| r[..count].fill(0.0));
                    continue;
                };
                let line = &plane[iy * w..][..w];
                for b in 0..count {
                    let x0 = ((block_start + b) * TILE) as isize - g.w.pad_lo as isize;
                    let d: [f32; WINDOW] = if x0 >= 0 && x0 as usize + WINDOW <= w {
                        line[x0 as usize..][..WINDOW].try_into().expect("six values")
                    } else {
                        std::array::from_fn(|k| {
                            let ix = x0 + k as isize;
                            if ix >= 0 && (ix as usize) < w {
                                line[ix as usize]
                            } else {
                                0.0
                            }
                        })
                    };
                    for (j, value) in input_1d(d).into_iter().enumerate() {
                        row[j][b] = value;
                    }
                }
            }
            let t = first_tile + ty * tw + block_start;
            for j in 0..WINDOW {
                let out = lanes(std::array::from_fn(|i| &rows[i][j]), input_1d);
                for (a, lanes) in out.iter().enumerate() {
                    points[a * WINDOW + j][t..t + count].copy_from_slice(&lanes[..count]);
                }
            }
        }
    }
}

/// Writes (or adds) the output tiles of one channel, reading `m[ξ * point_stride + first + t]`.
///
/// Per block of tiles along a tile row: the vertical transform (`Aᵀ ·`) for all tiles of the block at
/// once into `cols[r][j][tile]`, then the horizontal one (`· A`) tile by tile into the output rows.
fn output_tiles(
    g: &ConvGeometry,
    m: &[f32],
    first: usize,
    point_stride: usize,
    plane: &mut [f32],
    bias: f32,
    epilogue: Epilogue,
) {
    struct Kernel<'a>(&'a ConvGeometry, &'a [f32], usize, usize, &'a mut [f32], f32, Epilogue);
    impl WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) {
            output_tiles_inline(self.0, self.1, self.2, self.3, self.4, self.5, self.6)
        }
    }
    vectorize(Kernel(g, m, first, point_stride, plane, bias, epilogue));
}

// `b` walks the lane dimension of several arrays at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_tiles_inline(
    g: &ConvGeometry,
    m: &[f32],
    first: usize,
    point_stride: usize,
    plane: &mut [f32],
    bias: f32,
    epilogue: Epilogue,
) {
    let (th, tw) = tiles(g);
    let (oh, ow) = (g.h.output, g.w.output);
    let mut cols = [[[0.0f32; BLOCK]; WINDOW]; TILE];
    for ty in 0..th {
        for block_start in (0..tw).step_by(BLOCK) {
            let count = BLOCK.min(tw - block_start);
            let t = first + ty * tw + block_start;
            for j in 0..WINDOW {
                let mut m_lanes = [[0.0f32; BLOCK]; WINDOW];
                for (a, lane) in m_lanes.iter_mut().enumerate() {
                    lane[..count].copy_from_slice(&m[(a * WINDOW + j) * point_stride + t..][..count]);
                }
                let out = lanes(std::array::from_fn(|a| &m_lanes[a]), output_1d);
                for (col, lane) in cols.iter_mut().zip(out) {
                    col[j] = lane;
                }
            }
            let rows = TILE.min(oh - ty * TILE);
            for (r, col) in cols.iter().enumerate().take(rows) {
                let line = &mut plane[(ty * TILE + r) * ow..][..ow];
                for b in 0..count {
                    let x0 = (block_start + b) * TILE;
                    let values = output_1d(std::array::from_fn(|j| col[j][b]));
                    let out = &mut line[x0..][..TILE.min(ow - x0)];
                    match epilogue {
                        Epilogue::Write { relu: false } => {
                            out.iter_mut().zip(&values).for_each(|(o, &v)| *o = v + bias);
                        }
                        Epilogue::Write { relu: true } => {
                            out.iter_mut().zip(&values).for_each(|(o, &v)| *o = (v + bias).max(0.0));
                        }
                        Epilogue::Add => out.iter_mut().zip(&values).for_each(|(o, &v)| *o += v + bias),
                    }
                }
            }
        }
    }
}
