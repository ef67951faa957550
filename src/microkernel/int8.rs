//! The microkernel on 8-bit integers (the core of int8 inference, issue 30): the same tiles and runs as
//! the float32 one, unsigned 8-bit inputs times signed 8-bit weights summed into 32-bit integers.
//!
//! A reduction step takes a *quad* of input channels. At step `k` of a run at `(w, x)`, in bytes:
//! - the weights of output channel `16 b + lane` are the quad at `w + b · w_block_stride + 64 k + 4 lane`
//!   (a 16 × 16 block of weights becomes `[4 quads][16 lanes][4]`, oneDNN's and MLAS's `4i16o4i`);
//! - the input quad of pixel `p` is at `x + p · x_pixel_stride + 4 k · x_depth_stride`, broadcast to all
//!   lanes (four adjacent channels of the blocked layout with `x_depth_stride` 1).
//!
//! Each step adds `Σ x[4k+j] · w[4k+j]` (j = 0..3) into the lane's sum: [`dot_quad`], the model of one lane
//! of AVX512-VNNI's `vpdpbusd`. Integer sums are exact (until they wrap at 2^32, which `vpdpbusd` does
//! too), so every build equals the model bit for bit. The tile's output is the raw sums (`c` starts
//! from 0, or from its contents with [`super::Epilogue::accumulate`]); scaling them back to real values
//! is the caller's.
//!
//! Builds: [`Int8Isa::Scalar`], the model on every CPU; [`Int8Isa::Avx512Vnni`], `vpdpbusd`, 64 products
//! per instruction.

use std::sync::atomic::{AtomicU8, Ordering};

use super::{LANES, MAX_BLOCKS, MAX_PIXELS_ONE_BLOCK, Tile, TileShape};

/// An instruction set the int8 microkernel is built for, from the slowest to the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Int8Isa {
    /// Plain Rust, the model of the instruction: every machine.
    Scalar,
    /// AVX512-VNNI's `vpdpbusd`.
    Avx512Vnni,
}

/// `0` = no limit, else `1 + Int8Isa as u8`: the fastest set [`Int8Isa::best`] may return.
static LIMIT: AtomicU8 = AtomicU8::new(0);

impl Int8Isa {
    /// Every build, the slowest first.
    pub const ALL: [Int8Isa; 2] = [Int8Isa::Scalar, Int8Isa::Avx512Vnni];

    /// The name the commands print.
    pub fn name(self) -> &'static str {
        match self {
            Int8Isa::Scalar => "the scalar vpdpbusd model",
            Int8Isa::Avx512Vnni => "AVX512-VNNI",
        }
    }

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        match self {
            Int8Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Int8Isa::Avx512Vnni => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"),
            #[cfg(not(target_arch = "x86_64"))]
            Int8Isa::Avx512Vnni => false,
        }
    }

    /// The fastest available build within [`Int8Isa::set_limit`]'s limit and `INCEPT_MAX_ISA`
    /// ([`super::isa_cap`]), or the model when [`crate::kernels::scalar_only`] forces the baseline.
    pub fn best() -> Int8Isa {
        super::fastest(&Int8Isa::ALL, &LIMIT, super::isa_cap().int8, Int8Isa::available)
    }

    /// Caps [`Int8Isa::best`] at `limit` (`None` lifts the cap), so tests and benches can run each build.
    pub fn set_limit(limit: Option<Int8Isa>) {
        LIMIT.store(limit.map_or(0, |isa| isa as u8 + 1), Ordering::Relaxed);
    }

    /// The tile this build runs best: `vpdpbusd` needs one register per block's weights, like the float32
    /// FMA: 4 × 6 accumulators, 4 weights and a broadcast of 32 zmm.
    pub fn preferred_tile(self) -> TileShape {
        match self {
            Int8Isa::Avx512Vnni => TileShape { blocks: 4, pixels: 6 },
            Int8Isa::Scalar => TileShape { blocks: 1, pixels: 4 },
        }
    }
}

/// One lane of `vpdpbusd`: `acc` plus the four products of unsigned `x` and signed `w`, wrapping at 2^32
/// (each product fits 16 bits, their sum 18; only the accumulation can wrap).
#[inline]
pub fn dot_quad(acc: i32, x: [u8; 4], w: [i8; 4]) -> i32 {
    let sum: i32 = x.iter().zip(w).map(|(&x, w)| i32::from(x) * i32::from(w)).sum();
    acc.wrapping_add(sum)
}

/// The tile with its operands checked, as the builds receive it.
#[derive(Clone, Copy)]
pub(super) struct CheckedInt8<'a> {
    pub(super) tile: &'a Tile<'a>,
    pub(super) w: *const i8,
    pub(super) x: *const u8,
    pub(super) c: *mut i32,
}

/// Why [`run_int8`] refused a tile (a bug in the caller, so a panic message): the float32 kernel's
/// checks, with a step reading 64 weight bytes per block and an input quad per pixel, and no bias or
/// ReLU (the sums are raw integers).
fn check(tile: &Tile<'_>, isa: Int8Isa, w: &[i8], x: &[u8], c: &[i32]) -> Result<(), String> {
    let TileShape { blocks, pixels } = tile.shape;
    if tile.epilogue.bias.is_some() || tile.epilogue.relu {
        return Err("the int8 kernel writes raw sums: no bias, no ReLU".to_string());
    }
    let spans = |depth: usize| {
        let w_span = (blocks - 1) * tile.w_block_stride + depth * 4 * LANES;
        let x_span = (pixels - 1) * tile.x_pixel_stride + 4 * (depth - 1) * tile.x_depth_stride + 4;
        (w_span, x_span)
    };
    let lens = [w.len(), x.len(), c.len()];
    super::check_tile(tile, (isa.available(), &isa), super::max_pixels, spans, lens)
}

/// Computes one tile on signed 8-bit weights `w` and unsigned 8-bit inputs `x` into 32-bit sums `c` with
/// `isa`'s build. Panics, naming the operand, if the tile does not fit its slices, asks for a bias or a
/// ReLU, or `isa` is not available.
pub fn run_int8(isa: Int8Isa, tile: &Tile<'_>, w: &[i8], x: &[u8], c: &mut [i32]) {
    if let Err(why) = check(tile, isa, w, x, c) {
        panic!("int8 microkernel: {why}");
    }
    let checked = CheckedInt8 {
        tile,
        w: w.as_ptr(),
        x: x.as_ptr(),
        c: c.as_mut_ptr(),
    };
    match isa {
        Int8Isa::Scalar => scalar(checked),
        #[cfg(target_arch = "x86_64")]
        Int8Isa::Avx512Vnni => super::x86_int8::dispatch_avx512vnni(checked),
        #[cfg(not(target_arch = "x86_64"))]
        Int8Isa::Avx512Vnni => unreachable!("check() refused an unavailable instruction set"),
    }
}

/// The model: [`dot_quad`] per lane, in the vector build's order.
fn scalar(k: CheckedInt8<'_>) {
    let t = k.tile;
    let TileShape { blocks, pixels } = t.shape;
    let mut acc = [[[0i32; LANES]; MAX_PIXELS_ONE_BLOCK]; MAX_BLOCKS];
    let out = |b: usize, p: usize, lane: usize| t.c_offset + b * t.c_block_stride + p * LANES + lane;
    // SAFETY (every raw access below): `check` proved each run's weight and input spans and the output
    // span lie inside the slices these pointers came from.
    if t.epilogue.accumulate {
        for (b, acc_b) in acc.iter_mut().enumerate().take(blocks) {
            for (p, acc_bp) in acc_b.iter_mut().enumerate().take(pixels) {
                for (lane, a) in acc_bp.iter_mut().enumerate() {
                    *a = unsafe { *k.c.add(out(b, p, lane)) };
                }
            }
        }
    }
    for &(wo, xo) in t.runs {
        for step in 0..t.depth {
            for p in 0..pixels {
                let at = xo + p * t.x_pixel_stride + 4 * step * t.x_depth_stride;
                let xq = unsafe { [*k.x.add(at), *k.x.add(at + 1), *k.x.add(at + 2), *k.x.add(at + 3)] };
                for (b, acc_b) in acc.iter_mut().enumerate().take(blocks) {
                    let w = wo + b * t.w_block_stride + step * 4 * LANES;
                    for (lane, a) in acc_b[p].iter_mut().enumerate() {
                        let q = w + 4 * lane;
                        let wq = unsafe { [*k.w.add(q), *k.w.add(q + 1), *k.w.add(q + 2), *k.w.add(q + 3)] };
                        *a = dot_quad(*a, xq, wq);
                    }
                }
            }
        }
    }
    for (b, acc_b) in acc.iter().enumerate().take(blocks) {
        for (p, acc_bp) in acc_b.iter().enumerate().take(pixels) {
            for (lane, &a) in acc_bp.iter().enumerate() {
                unsafe { *k.c.add(out(b, p, lane)) = a };
            }
        }
    }
}
