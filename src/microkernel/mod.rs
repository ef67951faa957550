//! incept's own register-tiled microkernel: the inner loop every blocked convolution will run on.
//!
//! One call computes a tile of `blocks × 16` output channels by `pixels` output pixels, in the blocked
//! layout (`[channel block][pixel][16 lanes]`): the accumulators stay in vector registers while the kernel
//! walks a list of *runs*, each a (weight offset, input offset) pair over which it reduces `depth` steps.
//! A direct convolution passes one run per (kernel tap, input-channel block), so nothing is copied into
//! an im2col matrix; a GEMM passes one run.
//!
//! At reduction step `k` of a run at `(w, x)`:
//! - the weights of output channel `16 b + lane` are at `w + b · w_block_stride + 16 k + lane`
//!   (each block's weights contiguous, packed once: [`Tile::w_block_stride`]);
//! - the input of pixel `p` is at `x + p · x_pixel_stride + k · x_depth_stride` (broadcast to all lanes).
//!
//! Output lane `lane` of block `b`, pixel `p` is at `c_offset + b · c_block_stride + 16 p + lane`; the
//! tile is `c` (with [`Epilogue::accumulate`]) or 0, plus the sum over runs and steps, plus the bias,
//! then the ReLU.
//!
//! Four builds of the same loops: AVX-512 (one zmm per block and pixel), AVX2+FMA (two ymm), NEON on
//! aarch64 (four q registers), and a portable scalar one, the reference the tests hold the others to.
//! [`Isa::best`] picks at run time.

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
/// Defines one function per tile shape for an instruction set (the x86 and NEON builds use it), and the
/// match that picks the one for a checked tile. The hot reduction step is spelled out by macro repetition over literal block and pixel
/// indices: written as loops over const generics, LLVM left the 20- to 32-FMA shapes partly rolled,
/// indexed the accumulators in memory and spilled (70+ stack accesses in the 4×6 kernel, 33% of peak).
macro_rules! kernels {
    ($isa:ident, $dispatch:ident, $($shape:pat => $name:ident: $bs:tt x $ps:tt),+ $(,)?) => {
        $( $isa!($name, $bs, $ps); )+

        pub(in crate::microkernel) fn $dispatch(k: Checked<'_>) {
            // SAFETY: `run` checked that this CPU has the instruction set (`Isa::available`) and that
            // every access the kernel makes lies inside the caller's slices.
            unsafe {
                match (k.tile.shape.blocks, k.tile.shape.pixels) {
                    $( $shape => $name(k), )+
                    _ => unreachable!("check() bounds the tile shape"),
                }
            }
        }
    };
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
/// Every tile shape the dispatcher instantiates (checked by `check`: 1 to 4 blocks, 1 to 8 pixels, 1 to
/// 16 for one block and 12 for two), each with its function name and the block and pixel indices its
/// step spells out.
macro_rules! every_shape {
    ($tile:ident) => {
        kernels!($tile, dispatch,
    (1, 1) => tile_1x1: [0] x [0],
    (1, 2) => tile_1x2: [0] x [0, 1],
    (1, 3) => tile_1x3: [0] x [0, 1, 2],
    (1, 4) => tile_1x4: [0] x [0, 1, 2, 3],
    (1, 5) => tile_1x5: [0] x [0, 1, 2, 3, 4],
    (1, 6) => tile_1x6: [0] x [0, 1, 2, 3, 4, 5],
    (1, 7) => tile_1x7: [0] x [0, 1, 2, 3, 4, 5, 6],
    (1, 8) => tile_1x8: [0] x [0, 1, 2, 3, 4, 5, 6, 7],
    (1, 9) => tile_1x9: [0] x [0, 1, 2, 3, 4, 5, 6, 7, 8],
    (1, 10) => tile_1x10: [0] x [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    (1, 11) => tile_1x11: [0] x [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    (1, 12) => tile_1x12: [0] x [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    (1, 13) => tile_1x13: [0] x [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    (1, 14) => tile_1x14: [0] x [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    (1, 15) => tile_1x15: [0] x [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
    (1, 16) => tile_1x16: [0] x [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    (2, 1) => tile_2x1: [0, 1] x [0],
    (2, 2) => tile_2x2: [0, 1] x [0, 1],
    (2, 3) => tile_2x3: [0, 1] x [0, 1, 2],
    (2, 4) => tile_2x4: [0, 1] x [0, 1, 2, 3],
    (2, 5) => tile_2x5: [0, 1] x [0, 1, 2, 3, 4],
    (2, 6) => tile_2x6: [0, 1] x [0, 1, 2, 3, 4, 5],
    (2, 7) => tile_2x7: [0, 1] x [0, 1, 2, 3, 4, 5, 6],
    (2, 8) => tile_2x8: [0, 1] x [0, 1, 2, 3, 4, 5, 6, 7],
    (2, 9) => tile_2x9: [0, 1] x [0, 1, 2, 3, 4, 5, 6, 7, 8],
    (2, 10) => tile_2x10: [0, 1] x [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    (2, 11) => tile_2x11: [0, 1] x [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    (2, 12) => tile_2x12: [0, 1] x [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    (3, 1) => tile_3x1: [0, 1, 2] x [0],
    (3, 2) => tile_3x2: [0, 1, 2] x [0, 1],
    (3, 3) => tile_3x3: [0, 1, 2] x [0, 1, 2],
    (3, 4) => tile_3x4: [0, 1, 2] x [0, 1, 2, 3],
    (3, 5) => tile_3x5: [0, 1, 2] x [0, 1, 2, 3, 4],
    (3, 6) => tile_3x6: [0, 1, 2] x [0, 1, 2, 3, 4, 5],
    (3, 7) => tile_3x7: [0, 1, 2] x [0, 1, 2, 3, 4, 5, 6],
    (3, 8) => tile_3x8: [0, 1, 2] x [0, 1, 2, 3, 4, 5, 6, 7],
    (4, 1) => tile_4x1: [0, 1, 2, 3] x [0],
    (4, 2) => tile_4x2: [0, 1, 2, 3] x [0, 1],
    (4, 3) => tile_4x3: [0, 1, 2, 3] x [0, 1, 2],
    (4, 4) => tile_4x4: [0, 1, 2, 3] x [0, 1, 2, 3],
    (4, 5) => tile_4x5: [0, 1, 2, 3] x [0, 1, 2, 3, 4],
    (4, 6) => tile_4x6: [0, 1, 2, 3] x [0, 1, 2, 3, 4, 5],
    (4, 7) => tile_4x7: [0, 1, 2, 3] x [0, 1, 2, 3, 4, 5, 6],
    (4, 8) => tile_4x8: [0, 1, 2, 3] x [0, 1, 2, 3, 4, 5, 6, 7]
        );
    };
}

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_bf16;
#[cfg(target_arch = "x86_64")]
mod x86_int8;

pub mod amx;
pub mod bf16;
pub mod int8;
pub use bf16::{Bf16Isa, run_bf16};
pub use int8::{Int8Isa, run_int8};

use std::sync::atomic::{AtomicU8, Ordering};

/// Output channels per block: one AVX-512 vector of f32.
pub const LANES: usize = 16;

/// The largest tile the dispatcher instantiates: blocks of 16 output channels, and pixels.
pub const MAX_BLOCKS: usize = 4;
/// See [`MAX_BLOCKS`].
pub const MAX_PIXELS: usize = 8;
/// The widest tile of one block: a layer with 16 output channels has a single block, and 8 zmm
/// accumulators barely cover the FMA latency on two ports (4 cycles × 2), so its tiles run wider.
pub const MAX_PIXELS_ONE_BLOCK: usize = 16;
/// The widest tile of two blocks (32 output channels): 24 accumulators, as many as the 4×6 tile's.
pub const MAX_PIXELS_TWO_BLOCKS: usize = 12;

/// The most pixels a tile of `blocks` blocks may have.
pub const fn max_pixels(blocks: usize) -> usize {
    match blocks {
        1 => MAX_PIXELS_ONE_BLOCK,
        2 => MAX_PIXELS_TWO_BLOCKS,
        _ => MAX_PIXELS,
    }
}

/// An instruction set the microkernel is built for, from the slowest to the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, every machine: the reference.
    Scalar,
    /// AVX2 with FMA (x86-64-v3).
    Avx2,
    /// AVX-512F (x86-64-v4).
    Avx512,
    /// NEON, aarch64's Advanced SIMD (every aarch64 CPU has it).
    Neon,
}

/// `0` = no limit, else `1 + Isa as u8`: the fastest set [`Isa::best`] may return.
static LIMIT: AtomicU8 = AtomicU8::new(0);

impl Isa {
    /// Every set: the scalar reference, then x86's from the slowest, then aarch64's. A CPU has at most
    /// one architecture's, so "faster" ([`Isa::best`], [`Isa::set_limit`]) only compares within it.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            _ => false,
        }
    }

    /// The fastest available set, within the limit [`Isa::set_limit`] set (and scalar when
    /// [`crate::kernels::scalar_only`] forces the baseline everywhere).
    pub fn best() -> Isa {
        fastest(&Isa::ALL, &LIMIT, isa_cap().f32, Isa::available)
    }

    /// Caps [`Isa::best`] at `limit` (`None` lifts the cap), so tests and benches can run each build.
    pub fn set_limit(limit: Option<Isa>) {
        LIMIT.store(limit.map_or(0, |isa| isa as u8 + 1), Ordering::Relaxed);
    }

    /// The tile this set runs best: as many accumulators as its registers hold beside the weights and
    /// the broadcast input (AVX-512: 4 × 6 = 24 of 32 zmm; AVX2: 2 halves × 6 = 12 of 16 ymm; NEON: 4
    /// quarters × 6 = 24 of 32 q registers, beside 4 for the weights and 1 for the input).
    pub fn preferred_tile(self) -> TileShape {
        match self {
            Isa::Avx512 => TileShape { blocks: 4, pixels: 6 },
            Isa::Avx2 | Isa::Neon => TileShape { blocks: 1, pixels: 6 },
            Isa::Scalar => TileShape { blocks: 1, pixels: 4 },
        }
    }

    /// The pixels of this set's tile when a group has only `blocks` output blocks (a layer with fewer
    /// blocks than [`Isa::preferred_tile`]'s): as many accumulators as the preferred tile's, up to
    /// [`max_pixels`]. On AVX-512 one block runs 16 pixels, two blocks 12.
    pub fn tile_pixels(self, blocks: usize) -> usize {
        pixels_for(self.preferred_tile(), blocks)
    }
}

/// The fastest of `all` (the slowest first, in the order of their discriminants) that this CPU runs, within
/// the limit stored in `limit` (0: none, else 1 + the limit's index) and `cap`; the slowest (the scalar
/// build) when [`crate::kernels::scalar_only`] forces the baseline everywhere.
fn fastest<T: Copy + Ord>(all: &[T], limit: &AtomicU8, cap: T, available: impl Fn(T) -> bool) -> T {
    if crate::kernels::scalar_only() {
        return all[0];
    }
    let set = match limit.load(Ordering::Relaxed) {
        0 => all[all.len() - 1],
        n => all[usize::from(n - 1)],
    };
    let most = set.min(cap);
    all.iter()
        .rev()
        .copied()
        .find(|&t| t <= most && available(t))
        .unwrap_or(all[0])
}

/// The pixels of a tile of `blocks` blocks for a build whose best tile is `preferred`: its pixels when
/// `blocks` is at least as many, else as many accumulators as `preferred` has, up to [`max_pixels`].
fn pixels_for(preferred: TileShape, blocks: usize) -> usize {
    let TileShape {
        blocks: preferred,
        pixels,
    } = preferred;
    if blocks >= preferred {
        return pixels;
    }
    (preferred * pixels / blocks.max(1)).clamp(pixels, max_pixels(blocks))
}

/// The fastest builds `INCEPT_MAX_ISA` allows (read once): like oneDNN's `ONEDNN_MAX_CPU_ISA`, it caps
/// what [`Isa::best`] and [`Bf16Isa::best`] pick, so every tier can be run on one machine. Its values,
/// from the slowest: `scalar`, `avx2`, `avx512`, `avx512_bf16`, `amx` (and `neon` on aarch64). Unset,
/// nothing is capped; an unknown value is reported once on stderr and ignored.
pub struct IsaCap {
    /// The float32 microkernel's cap.
    pub f32: Isa,
    /// The bf16 microkernel's cap.
    pub bf16: Bf16Isa,
    /// The int8 microkernel's cap.
    pub int8: Int8Isa,
}

/// See [`IsaCap`].
pub fn isa_cap() -> &'static IsaCap {
    static CAP: std::sync::OnceLock<IsaCap> = std::sync::OnceLock::new();
    CAP.get_or_init(|| {
        let value = std::env::var("INCEPT_MAX_ISA").unwrap_or_default();
        match parse_isa_cap(&value) {
            Some(cap) => cap,
            None => {
                eprintln!(
                    "INCEPT_MAX_ISA={value:?} is not one of scalar, avx2, avx512, avx512_bf16, amx, neon: ignored"
                );
                parse_isa_cap("").expect("no cap")
            }
        }
    })
}

/// The cap an `INCEPT_MAX_ISA` value names (the empty string: none), or `None` for an unknown name.
pub fn parse_isa_cap(value: &str) -> Option<IsaCap> {
    // AVX512-VNNI comes with AVX512-BF16 on every CPU that has the latter (Zen 4 and 5, Sapphire and
    // Emerald Rapids); plain AVX-512 (Skylake-SP) has no VNNI.
    let (f32, bf16, int8) = match value.trim().to_ascii_lowercase().as_str() {
        "" | "amx" | "neon" => (Isa::Neon, Bf16Isa::Amx, Int8Isa::Avx512Vnni),
        "scalar" => (Isa::Scalar, Bf16Isa::Scalar, Int8Isa::Scalar),
        "avx2" => (Isa::Avx2, Bf16Isa::Scalar, Int8Isa::Scalar),
        "avx512" => (Isa::Avx512, Bf16Isa::Avx512, Int8Isa::Scalar),
        "avx512_bf16" => (Isa::Avx512, Bf16Isa::Avx512Bf16, Int8Isa::Avx512Vnni),
        _ => return None,
    };
    Some(IsaCap { f32, bf16, int8 })
}

/// A tile's size: `blocks` blocks of 16 output channels by `pixels` output pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileShape {
    /// Blocks of [`LANES`] output channels, 1 to [`MAX_BLOCKS`].
    pub blocks: usize,
    /// Output pixels, 1 to [`MAX_PIXELS`].
    pub pixels: usize,
}

impl TileShape {
    /// Multiply-adds times two for one reduction step: the FLOP count per step benches report.
    pub fn flops_per_step(self) -> u64 {
        2 * (self.blocks * LANES * self.pixels) as u64
    }
}

/// The distance to put between consecutive output-channel blocks of packed weights holding `values`
/// each: `values` rounded up to whole vectors, plus one vector when that is a multiple of 4 KiB. At a
/// 4 KiB multiple the tile's weight streams all map to the same L1 sets at every step; the 4×6 AVX-512
/// tile of `cargo bench --bench microkernel` ran at 33% of the FMA peak with a 147,456-byte stride and at
/// the peak with 64 bytes more.
pub fn block_stride(values: usize) -> usize {
    let stride = values.next_multiple_of(LANES);
    if stride % 1024 == 0 { stride + LANES } else { stride }
}

/// What happens to the sums before they are stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Start from the tile's current contents instead of 0.
    pub accumulate: bool,
    /// One value per output channel of the tile (`16 × blocks`), added after the sum.
    pub bias: Option<&'a [f32]>,
    /// `max(·, 0)` last.
    pub relu: bool,
}

/// Where one tile's operands lie; see the module documentation for the addressing.
#[derive(Debug, Clone, Copy)]
pub struct Tile<'a> {
    /// The tile's size.
    pub shape: TileShape,
    /// `(weight offset, input offset)` of each run.
    pub runs: &'a [(usize, usize)],
    /// Reduction steps per run.
    pub depth: usize,
    /// Distance between the weights of consecutive output-channel blocks.
    pub w_block_stride: usize,
    /// Distance between consecutive pixels' inputs.
    pub x_pixel_stride: usize,
    /// Distance between consecutive reduction steps' inputs (1 in the blocked layout).
    pub x_depth_stride: usize,
    /// Where lane 0 of block 0, pixel 0 of the output is.
    pub c_offset: usize,
    /// Distance between consecutive output-channel blocks of the output.
    pub c_block_stride: usize,
    /// Bias, ReLU, accumulation.
    pub epilogue: Epilogue<'a>,
}

/// The tile with its operands checked: what the builds receive (raw pointers, so their inner loops have
/// no bounds checks).
#[derive(Clone, Copy)]
struct Checked<'a> {
    tile: &'a Tile<'a>,
    w: *const f32,
    x: *const f32,
    c: *mut f32,
}

/// Why [`run`] refused a tile: which operand would be read or written out of bounds, or which setting
/// is out of range. A bug in the caller (the plan sizes every tile), so it is a panic message.
fn check(tile: &Tile<'_>, isa: Isa, w: &[f32], x: &[f32], c: &[f32]) -> Result<(), String> {
    let TileShape { blocks, pixels } = tile.shape;
    // Values one run reads, from its offsets: 16 weights per block and step, one input per pixel and step.
    let spans = |depth: usize| {
        let w_span = (blocks - 1) * tile.w_block_stride + depth * LANES;
        let x_span = (pixels - 1) * tile.x_pixel_stride + (depth - 1) * tile.x_depth_stride + 1;
        (w_span, x_span)
    };
    check_tile(
        tile,
        (isa.available(), &isa),
        max_pixels,
        spans,
        [w.len(), x.len(), c.len()],
    )
}

/// The checks every microkernel's tile shares: its shape (1 to `most_pixels(blocks)` pixels, of 1 to
/// [`MAX_BLOCKS`] blocks while `most_pixels` allows any), that the CPU runs the build (`available`,
/// named by `build`), that each run reads inside the weights and inputs (`spans(depth)`: the values one
/// run reads from its offsets, in the build's own elements), and that the output and the bias hold the
/// tile. `lens`: the weights', inputs' and output's lengths.
fn check_tile(
    tile: &Tile<'_>,
    (available, build): (bool, &dyn std::fmt::Debug),
    most_pixels: impl Fn(usize) -> usize,
    spans: impl Fn(usize) -> (usize, usize),
    [w_len, x_len, c_len]: [usize; 3],
) -> Result<(), String> {
    let TileShape { blocks, pixels } = tile.shape;
    let most_blocks = (1..=MAX_BLOCKS).rev().find(|&b| most_pixels(b) > 0).unwrap_or(0);
    if !(1..=most_blocks).contains(&blocks) || !(1..=most_pixels(blocks)).contains(&pixels) {
        return Err(format!(
            "tile {blocks}x{pixels}: {build:?} runs 1..={most_blocks} blocks of 1..={} pixels",
            most_pixels(blocks.clamp(1, most_blocks.max(1)))
        ));
    }
    if !available {
        return Err(format!("{build:?} is not available on this CPU"));
    }
    if tile.depth > 0 && !tile.runs.is_empty() {
        let (w_span, x_span) = spans(tile.depth);
        // The farthest run of each operand bounds them all (one pass of plain maxima, which
        // vectorizes: a weight gradient's tile has hundreds of runs, and this ran as 3% of a step).
        let (wo, xo) = tile
            .runs
            .iter()
            .fold((0, 0), |(w, x), &(wo, xo)| (w.max(wo), x.max(xo)));
        if wo.checked_add(w_span).is_none_or(|end| end > w_len) {
            return Err(format!("a run at weight offset {wo} reads {w_span} values of {w_len}"));
        }
        if xo.checked_add(x_span).is_none_or(|end| end > x_len) {
            return Err(format!("a run at input offset {xo} reads {x_span} values of {x_len}"));
        }
    }
    let c_span = (blocks - 1) * tile.c_block_stride + pixels * LANES;
    if tile.c_offset.checked_add(c_span).is_none_or(|end| end > c_len) {
        return Err(format!(
            "the output at {} spans {c_span} values of {c_len}",
            tile.c_offset
        ));
    }
    if let Some(bias) = tile.epilogue.bias {
        if bias.len() < blocks * LANES {
            return Err(format!(
                "{} bias values for {} output channels",
                bias.len(),
                blocks * LANES
            ));
        }
    }
    Ok(())
}

/// Computes one tile with `isa`'s build. Panics, naming the operand, if the tile does not fit its
/// slices or `isa` is not available (see [`Isa::available`]).
pub fn run(isa: Isa, tile: &Tile<'_>, w: &[f32], x: &[f32], c: &mut [f32]) {
    if let Err(why) = check(tile, isa, w, x, c) {
        panic!("microkernel: {why}");
    }
    let checked = Checked {
        tile,
        w: w.as_ptr(),
        x: x.as_ptr(),
        c: c.as_mut_ptr(),
    };
    match isa {
        Isa::Scalar => scalar(checked),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::dispatch_avx2(checked),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::dispatch_avx512(checked),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::dispatch(checked),
        _ => unreachable!("check() refused an unavailable instruction set"),
    }
}

/// The portable build: the same loop order and the same fused multiply-adds as the vector ones, one lane
/// at a time (`mul_add` is one instruction where the CPU has FMA, a correctly rounded library call
/// where it has not).
fn scalar(k: Checked<'_>) {
    let t = k.tile;
    let TileShape { blocks, pixels } = t.shape;
    let mut acc = [[[0f32; LANES]; MAX_PIXELS_ONE_BLOCK]; MAX_BLOCKS];
    // SAFETY (every raw read and write below): `check` proved that each run's weight and input spans
    // and the output span lie inside the slices these pointers came from.
    if t.epilogue.accumulate {
        for (b, acc_b) in acc.iter_mut().enumerate().take(blocks) {
            for (p, acc_bp) in acc_b.iter_mut().enumerate().take(pixels) {
                for (lane, a) in acc_bp.iter_mut().enumerate() {
                    *a = unsafe { *k.c.add(t.c_offset + b * t.c_block_stride + p * LANES + lane) };
                }
            }
        }
    }
    for &(wo, xo) in t.runs {
        for step in 0..t.depth {
            for p in 0..pixels {
                let xv = unsafe { *k.x.add(xo + p * t.x_pixel_stride + step * t.x_depth_stride) };
                for (b, acc_b) in acc.iter_mut().enumerate().take(blocks) {
                    let w = wo + b * t.w_block_stride + step * LANES;
                    for (lane, a) in acc_b[p].iter_mut().enumerate() {
                        // Fused, as the vector builds' FMAs: all three give identical bits.
                        *a = unsafe { *k.w.add(w + lane) }.mul_add(xv, *a);
                    }
                }
            }
        }
    }
    for (b, acc_b) in acc.iter().enumerate().take(blocks) {
        for (p, acc_bp) in acc_b.iter().enumerate().take(pixels) {
            for (lane, &a) in acc_bp.iter().enumerate() {
                let mut v = a + t.epilogue.bias.map_or(0.0, |bias| bias[b * LANES + lane]);
                if t.epilogue.relu {
                    v = v.max(0.0);
                }
                unsafe { *k.c.add(t.c_offset + b * t.c_block_stride + p * LANES + lane) = v };
            }
        }
    }
}

/// Measures this CPU's single-thread FMA throughput with `isa`: `iterations` rounds of independent
/// fused multiply-adds on 12 accumulators held in registers. Returns FLOPs done (2 per lane per FMA),
/// for the caller to divide by the time it took: the peak a kernel's GFLOP/s is a fraction of.
pub fn fma_peak_flops(isa: Isa, iterations: u64) -> u64 {
    assert!(isa.available(), "{isa:?} is not available on this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::fma_loop_avx512(iterations),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::fma_loop_avx2(iterations),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::fma_loop(iterations),
        _ => {
            // Twelve independent chains, as the vector loops run; the compiler may vectorize them.
            let mut acc = [1.0f32; 12];
            for _ in 0..iterations {
                for a in &mut acc {
                    *a = a.mul_add(0.999_999, 1e-7);
                }
            }
            std::hint::black_box(acc);
            iterations * 12 * 2
        }
    }
}
