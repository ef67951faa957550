//! The microkernel on bf16 operands: the same tiles, runs and epilogue as the float32 one, with weights
//! and inputs in bf16 and the sums in float32.
//!
//! A reduction step takes a *pair* of input channels. At step `k` of a run at `(w, x)`, in bf16 values:
//! - the weights of output channel `16 b + lane` are the pair at `w + b · w_block_stride + 32 k + 2 lane`
//!   (a 16 × 16 block of float32 weights becomes `[8 pairs][16 lanes][2]`, oneDNN's `8i16o2i`);
//! - the input pair of pixel `p` is at `x + p · x_pixel_stride + 2 k · x_depth_stride`, broadcast to all
//!   lanes: two adjacent channels of the blocked layout (`x_depth_stride` 1) in a convolution; two
//!   adjacent pixels of one channel in a weight gradient, whose pairs lie 16 channels apart.
//!
//! Each step adds `w[2k+1]·x[2k+1] + w[2k]·x[2k]` into the lane's float32 sum by [`crate::bf16::dot_pair`].
//! The builds, each equal to that model bit for bit:
//! - [`Bf16Isa::Scalar`]: the model itself, one lane at a time, on every CPU;
//! - [`Bf16Isa::Avx512`]: AVX-512F without bf16 arithmetic, each pair as two float32 FMAs (the odd
//!   element first), as oneDNN emulates `vdpbf16ps`; equal to the model when denormals are flushed
//!   (the `incept` command flushes them);
//! - [`Bf16Isa::Avx512Bf16`]: `vdpbf16ps`, 32 products per instruction. On an AMD Zen 5 it runs 2.0× the
//!   FLOP rate of float32 FMAs (`cargo bench --bench microkernel`); on Intel's Emerald Rapids 0.49×
//!   (LOWPREC.md §2), where AMX is the faster unit.

use std::sync::atomic::{AtomicU8, Ordering};

use super::{LANES, MAX_BLOCKS, MAX_PIXELS_ONE_BLOCK, Tile, TileShape};
use crate::bf16;

/// An instruction set the bf16 microkernel is built for, from the slowest to the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bf16Isa {
    /// Plain Rust, the model of the instruction: every machine.
    Scalar,
    /// AVX-512F, float32 FMAs on the widened pairs.
    Avx512,
    /// AVX512-BF16's `vdpbf16ps`.
    Avx512Bf16,
    /// AMX-BF16's tiles (`tdpbf16ps`), through [`super::amx`]'s tile program.
    Amx,
    /// The same tile program on the scalar model of the tiles: every machine, for tests. Never picked
    /// by [`Bf16Isa::best`] (it is the slowest build of all).
    AmxModel,
}

/// `0` = no limit, else `1 + Bf16Isa as u8`: the fastest set [`Bf16Isa::best`] may return.
static LIMIT: AtomicU8 = AtomicU8::new(0);

impl Bf16Isa {
    /// Every build [`Bf16Isa::best`] may pick, the slowest first (the tile model is not one).
    pub const ALL: [Bf16Isa; 4] = [Bf16Isa::Scalar, Bf16Isa::Avx512, Bf16Isa::Avx512Bf16, Bf16Isa::Amx];

    /// The model this build equals bit for bit: [`Bf16Isa::Scalar`] for the vector builds, which
    /// take each pair's odd product first as `vdpbf16ps` does; [`Bf16Isa::AmxModel`] for the tiles,
    /// whose `tdpbf16ps` takes the even one first.
    pub fn model(self) -> Bf16Isa {
        match self {
            Bf16Isa::Amx | Bf16Isa::AmxModel => Bf16Isa::AmxModel,
            _ => Bf16Isa::Scalar,
        }
    }

    /// Whether this build runs AMX's tile program, whose tiles are at most
    /// [`super::amx::MAX_SHAPE`] and read each pixel's pairs contiguously (`x_depth_stride` 1).
    pub fn is_tiles(self) -> bool {
        self.model() == Bf16Isa::AmxModel
    }

    /// The build for tiles whose input pairs are not contiguous (the weight gradient's, whose pairs
    /// are two pixels of one channel, 16 channels apart): this one, or for the tile program a vector
    /// build (the tile model's: the scalar model). Every AMX CPU so far is an Intel Xeon, where
    /// `vdpbf16ps` runs 0.49× the FLOP rate of float32 FMAs (LOWPREC.md §2) and the widened pairs, two
    /// FMAs per pair, run at the FMA rate: so the widened build, until an AMX session measures both.
    pub fn for_strided_pairs(self) -> Bf16Isa {
        match self {
            Bf16Isa::Amx => [Bf16Isa::Avx512]
                .into_iter()
                .find(|isa| isa.available())
                .unwrap_or(Bf16Isa::Scalar),
            Bf16Isa::AmxModel => Bf16Isa::Scalar,
            isa => isa,
        }
    }

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        match self {
            Bf16Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Bf16Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Bf16Isa::Avx512Bf16 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(target_arch = "x86_64")]
            Bf16Isa::Amx => super::amx::available(),
            Bf16Isa::AmxModel => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest available build within [`Bf16Isa::set_limit`]'s limit and `INCEPT_MAX_ISA`
    /// ([`super::isa_cap`]), or the model when [`crate::kernels::scalar_only`] forces the baseline.
    pub fn best() -> Bf16Isa {
        super::fastest(&Bf16Isa::ALL, &LIMIT, super::isa_cap().bf16, Bf16Isa::available)
    }

    /// Caps [`Bf16Isa::best`] at `limit` (`None` lifts the cap), so tests and benches can run each build.
    pub fn set_limit(limit: Option<Bf16Isa>) {
        // The tile model is no build `best` picks: as a limit, it stands for the tiles.
        LIMIT.store(
            limit.map_or(0, |isa| isa.min(Bf16Isa::Amx) as u8 + 1),
            Ordering::Relaxed,
        );
    }

    /// The name `summary` and `bench` print.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Isa::Scalar => "scalar bf16 model",
            Bf16Isa::Avx512 => "AVX-512 (bf16 widened to f32)",
            Bf16Isa::Avx512Bf16 => "AVX512-BF16",
            Bf16Isa::Amx => "AMX-BF16",
            Bf16Isa::AmxModel => "AMX tile model",
        }
    }

    /// The tile this build runs best. `vdpbf16ps` needs one register per block's weights, like the
    /// float32 FMA: 4 × 6 accumulators, 4 weights and a broadcast of 32 zmm. The widened pairs need
    /// two weight and two input registers: 4 × 4.
    pub fn preferred_tile(self) -> TileShape {
        match self {
            Bf16Isa::Amx | Bf16Isa::AmxModel => super::amx::MAX_SHAPE,
            Bf16Isa::Avx512Bf16 => TileShape { blocks: 4, pixels: 6 },
            Bf16Isa::Avx512 => TileShape { blocks: 4, pixels: 4 },
            Bf16Isa::Scalar => TileShape { blocks: 1, pixels: 4 },
        }
    }

    /// The pixels of this build's tile for a group of only `blocks` output blocks (see
    /// [`super::Isa::tile_pixels`]).
    pub fn tile_pixels(self, blocks: usize) -> usize {
        if self.is_tiles() {
            // Each accumulator tile holds 16 pixels of one block whatever the blocks.
            return super::amx::MAX_SHAPE.pixels;
        }
        super::pixels_for(self.preferred_tile(), blocks)
    }
}

/// The tile with its operands checked, as the builds receive it.
#[derive(Clone, Copy)]
pub(super) struct CheckedBf16<'a> {
    pub(super) tile: &'a Tile<'a>,
    pub(super) w: *const u16,
    pub(super) x: *const u16,
    pub(super) c: *mut f32,
}

/// Why [`run_bf16`] refused a tile (a bug in the caller, so a panic message): the float32 kernel's
/// checks, with a step reading 32 bf16 weights per block and an input pair per pixel.
fn check(tile: &Tile<'_>, isa: Bf16Isa, w: &[u16], x: &[u16], c: &[f32]) -> Result<(), String> {
    let TileShape { blocks, pixels } = tile.shape;
    let spans = |depth: usize| {
        let w_span = (blocks - 1) * tile.w_block_stride + depth * 2 * LANES;
        let x_span = (pixels - 1) * tile.x_pixel_stride + 2 * (depth - 1) * tile.x_depth_stride + 2;
        (w_span, x_span)
    };
    let most_pixels = |blocks: usize| match isa.is_tiles() {
        true if blocks <= super::amx::MAX_SHAPE.blocks => super::amx::MAX_SHAPE.pixels,
        true => 0,
        false => super::max_pixels(blocks),
    };
    if isa.is_tiles() && tile.x_depth_stride != 1 {
        return Err(format!(
            "{isa:?} reads each pixel's pairs contiguously, not {} apart",
            tile.x_depth_stride
        ));
    }
    super::check_tile(
        tile,
        (isa.available(), &isa),
        most_pixels,
        spans,
        [w.len(), x.len(), c.len()],
    )
}

/// Computes one tile on bf16 weights `w` and inputs `x` into float32 `c` with `isa`'s build. Panics,
/// naming the operand, if the tile does not fit its slices or `isa` is not available.
pub fn run_bf16(isa: Bf16Isa, tile: &Tile<'_>, w: &[u16], x: &[u16], c: &mut [f32]) {
    if let Err(why) = check(tile, isa, w, x, c) {
        panic!("bf16 microkernel: {why}");
    }
    let checked = CheckedBf16 {
        tile,
        w: w.as_ptr(),
        x: x.as_ptr(),
        c: c.as_mut_ptr(),
    };
    match isa {
        Bf16Isa::Scalar => scalar(checked),
        #[cfg(target_arch = "x86_64")]
        Bf16Isa::Avx512 => super::x86_bf16::dispatch_avx512(checked),
        #[cfg(target_arch = "x86_64")]
        Bf16Isa::Avx512Bf16 => super::x86_bf16::dispatch_avx512bf16(checked),
        #[cfg(target_arch = "x86_64")]
        Bf16Isa::Amx => super::amx::run_on_hardware(checked),
        Bf16Isa::AmxModel => super::amx::run_on_model(checked),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("check() refused an unavailable instruction set"),
    }
}

/// The model: [`bf16::dot_pair`] per lane, in the vector builds' order.
fn scalar(k: CheckedBf16<'_>) {
    let t = k.tile;
    let TileShape { blocks, pixels } = t.shape;
    let mut acc = [[[0f32; LANES]; MAX_PIXELS_ONE_BLOCK]; MAX_BLOCKS];
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
                let at = xo + p * t.x_pixel_stride + 2 * step * t.x_depth_stride;
                let xv = unsafe { [*k.x.add(at), *k.x.add(at + 1)] };
                for (b, acc_b) in acc.iter_mut().enumerate().take(blocks) {
                    let w = wo + b * t.w_block_stride + step * 2 * LANES;
                    for (lane, a) in acc_b[p].iter_mut().enumerate() {
                        let wv = unsafe { [*k.w.add(w + 2 * lane), *k.w.add(w + 2 * lane + 1)] };
                        *a = bf16::dot_pair(*a, wv, xv);
                    }
                }
            }
        }
    }
    for (b, acc_b) in acc.iter().enumerate().take(blocks) {
        for (p, acc_bp) in acc_b.iter().enumerate().take(pixels) {
            for (lane, &a) in acc_bp.iter().enumerate() {
                // No bias, no addition: `-0 + 0` would turn a negative zero positive.
                let mut v = t.epilogue.bias.map_or(a, |bias| a + bias[b * LANES + lane]);
                if t.epilogue.relu {
                    v = v.max(0.0);
                }
                unsafe { *k.c.add(out(b, p, lane)) = v };
            }
        }
    }
}

/// Measures one thread's `vdpbf16ps` throughput: `iterations` rounds on 24 accumulators. Returns the
/// FLOPs done (2 per product, 32 products per instruction).
pub fn dot_peak_flops(iterations: u64) -> u64 {
    assert!(
        Bf16Isa::Avx512Bf16.available(),
        "AVX512-BF16 is not available on this CPU"
    );
    #[cfg(target_arch = "x86_64")]
    return super::x86_bf16::dot_loop(iterations);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("checked above ({iterations} iterations asked)")
}
