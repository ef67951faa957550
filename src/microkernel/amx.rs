//! AMX (Intel's Advanced Matrix Extensions) for bf16: eight tile registers of up to 16 rows × 64 bytes,
//! and `tdpbf16ps`, which adds the product of a 16 × 32 bf16 tile and a 32 × 16 bf16 tile (stored as
//! pairs, `[16 pair-rows][16 columns][2]`) into a 16 × 16 float32 tile.
//!
//! Stable Rust has no AMX intrinsics, so [`Hardware`] assembles every tile instruction with `asm!`. The
//! same tile programs also run on [`TileModel`], a scalar model of the registers and instructions, so
//! their addressing is tested on every CPU; where the CPU has AMX, the tests hold the two to the same bits.
//! A program is written once against [`TileUnit`].
//!
//! [`run_tile`] is the bf16 microkernel's tile as such a program: `run_bf16` runs it as
//! [`super::Bf16Isa::Amx`] on the CPU's tiles and as [`super::Bf16Isa::AmxModel`] on the model. It
//! takes the 16-channel blocked layout as it is (a tile row holds a pixel's 8 pairs, half of the 64
//! bytes a row can hold, so each `tdpbf16ps` does half the work it could: 32-channel blocks are the
//! next step once an AMX CPU can time it). The convolutions' forward passes and input gradients run on
//! it; a weight gradient's pairs are two pixels of one channel 16 channels apart, which a tile row
//! cannot load, so those tiles go to a vector build ([`super::Bf16Isa::for_strided_pairs`]).
//!
//! Linux enables AMX per process: [`available`] asks for the tile data permission once
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); without it the first tile instruction
//! raises SIGILL. Detection reads CPUID and XCR0 directly (`is_x86_feature_detected!` has no AMX names
//! on stable Rust).
//!
//! What `tdpbf16ps` computes, lane by lane, per Intel's pseudo-code: for each pair `k`, the even element's
//! product, then the odd one's, each added into the float32 sum with one rounding (nearest even), denormal
//! inputs read as zero and denormal results flushed: [`dot_pair_even_first`]. That order is the opposite of
//! `vdpbf16ps`'s as measured on AMD Zen 5 ([`crate::bf16::dot_pair`]); whether AMX hardware follows its
//! pseudo-code this exactly is checked where the tests meet an AMX CPU (`tests/amx_tiles.rs`).

use super::bf16::CheckedBf16;
use super::{LANES, TileShape};
use crate::bf16;

/// Rows of a tile register.
pub const TILE_ROWS: usize = 16;
/// Bytes of a tile row.
pub const TILE_ROW_BYTES: usize = 64;
/// Tile registers.
pub const TILES: usize = 8;

/// One lane of `tdpbf16ps` for one pair, per Intel's pseudo-code: `acc + a[0]·b[0] + a[1]·b[1]`, the even
/// product first, each addition one rounding of the exact product's sum, denormals read as zero and
/// flushed from results.
#[inline]
pub fn dot_pair_even_first(acc: f32, a: [u16; 2], b: [u16; 2]) -> f32 {
    let flush = bf16::flush;
    let even = flush(bf16::to_f32(a[0])).mul_add(flush(bf16::to_f32(b[0])), flush(acc));
    flush(flush(bf16::to_f32(a[1])).mul_add(flush(bf16::to_f32(b[1])), flush(even)))
}

/// A tile configuration (palette 1): rows and bytes per row of each of the eight tiles, as the 64-byte
/// block `ldtilecfg` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Every tile `rows[t]` rows of `colsb[t]` bytes (0 rows: unused).
    pub fn new(rows: [u8; TILES], colsb: [u16; TILES]) -> TileConfig {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..TILES {
            assert!(usize::from(rows[t]) <= TILE_ROWS && usize::from(colsb[t]) <= TILE_ROW_BYTES);
            config.rows[t] = rows[t];
            config.colsb[t] = colsb[t];
        }
        config
    }

    /// Rows of tile `t`.
    pub fn rows(&self, t: usize) -> usize {
        usize::from(self.rows[t])
    }

    /// Bytes per row of tile `t`.
    pub fn colsb(&self, t: usize) -> usize {
        usize::from(self.colsb[t])
    }
}

/// The tile instructions a program uses. Tile numbers are constants (the instructions encode them).
///
/// # Safety
/// `load` reads `rows × colsb` bytes of tile `T` from `ptr + r·stride` for each row `r`, and `store`
/// writes them there: the caller guarantees those bytes are inside one live allocation (readable, or
/// writable and not aliased).
pub unsafe trait TileUnit {
    /// Loads the configuration (and zeroes every tile).
    fn configure(&mut self, config: &TileConfig);
    /// Zeroes tile `T`.
    fn zero<const T: u8>(&mut self);
    /// Loads tile `T`'s rows from `ptr`, `stride` bytes apart.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn load<const T: u8>(&mut self, ptr: *const u8, stride: usize);
    /// Stores tile `T`'s rows to `ptr`, `stride` bytes apart.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn store<const T: u8>(&mut self, ptr: *mut u8, stride: usize);
    /// `C += A · B` in bf16 pairs with float32 sums (`tdpbf16ps`).
    fn dot_bf16<const C: u8, const A: u8, const B: u8>(&mut self);
    /// Leaves the tile state (`tilerelease`).
    fn release(&mut self);
}

/// The scalar model of the tile registers: what the programs are tested on everywhere.
pub struct TileModel {
    config: TileConfig,
    tiles: [[u8; TILE_ROWS * TILE_ROW_BYTES]; TILES],
}

impl Default for TileModel {
    fn default() -> TileModel {
        TileModel {
            config: TileConfig::new([0; TILES], [0; TILES]),
            tiles: [[0; TILE_ROWS * TILE_ROW_BYTES]; TILES],
        }
    }
}

impl TileModel {
    /// The bytes of tile `t` (rows of 64 bytes; bytes past the configured width are zero).
    pub fn tile(&self, t: usize) -> &[u8] {
        &self.tiles[t]
    }

    fn f32_at(&self, t: usize, row: usize, n: usize) -> f32 {
        let at = row * TILE_ROW_BYTES + 4 * n;
        f32::from_le_bytes(self.tiles[t][at..at + 4].try_into().expect("4 bytes"))
    }

    fn pair_at(&self, t: usize, row: usize, n: usize) -> [u16; 2] {
        let at = row * TILE_ROW_BYTES + 4 * n;
        let bytes = &self.tiles[t][at..at + 4];
        [
            u16::from_le_bytes([bytes[0], bytes[1]]),
            u16::from_le_bytes([bytes[2], bytes[3]]),
        ]
    }
}

// SAFETY: the model reads and writes exactly the bytes the trait documents, and checks shapes.
unsafe impl TileUnit for TileModel {
    fn configure(&mut self, config: &TileConfig) {
        self.config = *config;
        self.tiles = [[0; TILE_ROWS * TILE_ROW_BYTES]; TILES];
    }

    fn zero<const T: u8>(&mut self) {
        self.tiles[usize::from(T)] = [0; TILE_ROWS * TILE_ROW_BYTES];
    }

    unsafe fn load<const T: u8>(&mut self, ptr: *const u8, stride: usize) {
        let t = usize::from(T);
        let (rows, colsb) = (self.config.rows(t), self.config.colsb(t));
        self.tiles[t] = [0; TILE_ROWS * TILE_ROW_BYTES];
        for r in 0..rows {
            // SAFETY: the caller guarantees each row's `colsb` bytes are readable.
            let row = unsafe { std::slice::from_raw_parts(ptr.add(r * stride), colsb) };
            self.tiles[t][r * TILE_ROW_BYTES..][..colsb].copy_from_slice(row);
        }
    }

    unsafe fn store<const T: u8>(&mut self, ptr: *mut u8, stride: usize) {
        let t = usize::from(T);
        let (rows, colsb) = (self.config.rows(t), self.config.colsb(t));
        for r in 0..rows {
            // SAFETY: the caller guarantees each row's `colsb` bytes are writable and unaliased.
            let row = unsafe { std::slice::from_raw_parts_mut(ptr.add(r * stride), colsb) };
            row.copy_from_slice(&self.tiles[t][r * TILE_ROW_BYTES..][..colsb]);
        }
    }

    fn dot_bf16<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (c, a, b) = (usize::from(C), usize::from(A), usize::from(B));
        let cfg = self.config;
        // C is M × N float32, A is M × K bf16 (K/2 pairs of 4 bytes), B is K/2 rows of N pairs.
        let (m, n, pairs) = (cfg.rows(c), cfg.colsb(c) / 4, cfg.colsb(a) / 4);
        assert!(
            cfg.rows(a) == m && cfg.rows(b) == pairs && cfg.colsb(b) == cfg.colsb(c),
            "tdpbf16ps: shapes C {m}x{n}, A {}x{pairs} pairs, B {}x{} pairs",
            cfg.rows(a),
            cfg.rows(b),
            cfg.colsb(b) / 4
        );
        for row in 0..m {
            for col in 0..n {
                let mut acc = self.f32_at(c, row, col);
                for k in 0..pairs {
                    acc = dot_pair_even_first(acc, self.pair_at(a, row, k), self.pair_at(b, k, col));
                }
                let at = row * TILE_ROW_BYTES + 4 * col;
                self.tiles[c][at..at + 4].copy_from_slice(&acc.to_le_bytes());
            }
        }
    }

    fn release(&mut self) {
        self.configure(&TileConfig::new([0; TILES], [0; TILES]));
    }
}

/// The CPU's own tiles, through `asm!`. Only [`Hardware::new`] makes one, after [`available`].
#[cfg(target_arch = "x86_64")]
pub struct Hardware(());

#[cfg(target_arch = "x86_64")]
impl Hardware {
    /// The CPU's tiles, if it has AMX-BF16 and Linux let this process use them.
    pub fn new() -> Option<Hardware> {
        available().then_some(Hardware(()))
    }
}

/// `asm!` with every tile register declared clobbered (`tmm0`-`tmm7` are clobber-only registers in Rust),
/// so the compiler never assumes a tile survives one of our blocks. Operands end with a comma.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_asm {
    ($template:expr; $($operands:tt)*) => {
        std::arch::asm!(
            $template,
            $($operands)*
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack)
        )
    };
}

/// One `asm!` per tile number: `$template` is spliced with the number, e.g. `tilezero tmm` + `3`.
#[cfg(target_arch = "x86_64")]
macro_rules! per_tile {
    ($t:expr, $prefix:literal, $suffix:literal; $($operands:tt)*) => {
        match $t {
            0 => tile_asm!(concat!($prefix, "0", $suffix); $($operands)*),
            1 => tile_asm!(concat!($prefix, "1", $suffix); $($operands)*),
            2 => tile_asm!(concat!($prefix, "2", $suffix); $($operands)*),
            3 => tile_asm!(concat!($prefix, "3", $suffix); $($operands)*),
            4 => tile_asm!(concat!($prefix, "4", $suffix); $($operands)*),
            5 => tile_asm!(concat!($prefix, "5", $suffix); $($operands)*),
            6 => tile_asm!(concat!($prefix, "6", $suffix); $($operands)*),
            7 => tile_asm!(concat!($prefix, "7", $suffix); $($operands)*),
            _ => unreachable!("tile numbers are 0 to 7"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
// SAFETY: each instruction touches exactly the bytes the trait documents (the configured rows and
// widths); `Hardware` exists only where the CPU and Linux allow AMX.
unsafe impl TileUnit for Hardware {
    fn configure(&mut self, config: &TileConfig) {
        // SAFETY: `config` is a live, 64-byte aligned palette-1 configuration; ldtilecfg reads 64 bytes
        // and zeroes the tiles.
        unsafe { tile_asm!("ldtilecfg [{c}]"; c = in(reg) config,) };
    }

    fn zero<const T: u8>(&mut self) {
        // SAFETY: zeroes one tile register, nothing else.
        unsafe { per_tile!(T, "tilezero tmm", "";) };
    }

    unsafe fn load<const T: u8>(&mut self, ptr: *const u8, stride: usize) {
        // SAFETY: the caller guarantees the configured rows are readable.
        unsafe { per_tile!(T, "tileloadd tmm", ", [{p} + {s}*1]"; p = in(reg) ptr, s = in(reg) stride,) };
    }

    unsafe fn store<const T: u8>(&mut self, ptr: *mut u8, stride: usize) {
        // SAFETY: the caller guarantees the configured rows are writable and unaliased.
        unsafe { per_tile!(T, "tilestored [{p} + {s}*1], tmm", ""; p = in(reg) ptr, s = in(reg) stride,) };
    }

    fn dot_bf16<const C: u8, const A: u8, const B: u8>(&mut self) {
        // The programs use the 2×2 plan of oneDNN and MLAS: accumulators 0-3, inputs 4-5, weights 6-7.
        // SAFETY (each arm): tile registers only; the program configured the shapes.
        unsafe {
            match (C, A, B) {
                (0, 4, 6) => tile_asm!("tdpbf16ps tmm0, tmm4, tmm6";),
                (1, 4, 7) => tile_asm!("tdpbf16ps tmm1, tmm4, tmm7";),
                (2, 5, 6) => tile_asm!("tdpbf16ps tmm2, tmm5, tmm6";),
                (3, 5, 7) => tile_asm!("tdpbf16ps tmm3, tmm5, tmm7";),
                _ => unimplemented!("tdpbf16ps tmm{C}, tmm{A}, tmm{B} is not in the 2x2 plan"),
            }
        }
    }

    fn release(&mut self) {
        // SAFETY: returns the tile state to its initial configuration; touches no memory.
        unsafe { tile_asm!("tilerelease";) };
    }
}

/// Pairs a tile row holds: 64 bytes of bf16.
pub const MAX_PAIRS: usize = 16;
/// Pixels of one accumulator tile (its rows).
const GROUP: usize = TILE_ROWS;

/// The most output blocks and pixels of one AMX tile call: 2 × 2 accumulator tiles of 16 pixels × 16
/// output channels.
pub const MAX_SHAPE: TileShape = TileShape {
    blocks: 2,
    pixels: 2 * GROUP,
};

/// The bf16 microkernel's tile (the addressing of [`super::bf16`]) as a tile program on `unit`: oneDNN's
/// and MLAS's 2 × 2 plan, accumulator `2 g + b` for pixel group `g` (pixels `16 g ..`) and output block
/// `b`, the inputs of group `g` in tile `4 + g` (a row per pixel: its pairs, contiguous, as
/// `x_depth_stride` 1 lays them), the weights of block `b` in tile `6 + b` (a row per pair: the block's
/// 16 lanes × 2, as the packing lays them). Each run goes in equal steps of at most 16 pairs (one
/// configuration holds the whole call, and `ldtilecfg` would zero the sums). The sums are stored into
/// `c`, then the bias and the ReLU are applied there.
pub(super) fn run_tile<U: TileUnit>(unit: &mut U, k: CheckedBf16<'_>) {
    let t = k.tile;
    let TileShape { blocks, pixels } = t.shape;
    let rows = [pixels.min(GROUP), pixels.saturating_sub(GROUP)];
    let groups = if rows[1] > 0 { 2 } else { 1 };
    // The largest step that divides the depth: 8 pairs for a 16-channel block, 16 for two.
    let step = (1..=MAX_PAIRS).rev().find(|s| t.depth % s == 0).unwrap_or(1);
    let (mut tile_rows, mut colsb) = ([0u8; TILES], [0u16; TILES]);
    for g in 0..groups {
        for b in 0..blocks {
            (tile_rows[2 * g + b], colsb[2 * g + b]) = (rows[g] as u8, 64);
        }
        (tile_rows[4 + g], colsb[4 + g]) = (rows[g] as u8, (4 * step) as u16);
    }
    for b in 0..blocks {
        (tile_rows[6 + b], colsb[6 + b]) = (step as u8, 64);
    }
    unit.configure(&TileConfig::new(tile_rows, colsb));
    const F32_ROW: usize = LANES * 4;
    const PAIR_ROW: usize = LANES * 4;
    let c_at = |g: usize, b: usize| t.c_offset + b * t.c_block_stride + g * GROUP * LANES;
    // SAFETY (every load and store): `run_bf16`'s check proved each run's weight span
    // (`(blocks - 1) · w_block_stride + 32 · depth`), input span (`(pixels - 1) · x_pixel_stride +
    // 2 · depth` with `x_depth_stride` 1) and the output span lie inside the slices these pointers came
    // from; every tile row below is within them.
    unsafe {
        for g in 0..groups {
            for b in 0..blocks {
                let c = k.c.add(c_at(g, b)).cast::<u8>();
                match (t.epilogue.accumulate, g, b) {
                    (true, 0, 0) => unit.load::<0>(c, F32_ROW),
                    (true, 0, 1) => unit.load::<1>(c, F32_ROW),
                    (true, 1, 0) => unit.load::<2>(c, F32_ROW),
                    (true, 1, 1) => unit.load::<3>(c, F32_ROW),
                    (false, 0, 0) => unit.zero::<0>(),
                    (false, 0, 1) => unit.zero::<1>(),
                    (false, 1, 0) => unit.zero::<2>(),
                    (false, 1, 1) => unit.zero::<3>(),
                    _ => unreachable!("2 x 2 tiles"),
                }
            }
        }
        let x_row = 2 * t.x_pixel_stride;
        for &(wo, xo) in t.runs {
            for first in (0..t.depth).step_by(step) {
                let (w, x) = (k.w.add(wo + 2 * LANES * first), k.x.add(xo + 2 * first));
                unit.load::<4>(x.cast(), x_row);
                if groups == 2 {
                    unit.load::<5>(x.add(GROUP * t.x_pixel_stride).cast(), x_row);
                }
                unit.load::<6>(w.cast(), PAIR_ROW);
                if blocks == 2 {
                    unit.load::<7>(w.add(t.w_block_stride).cast(), PAIR_ROW);
                }
                unit.dot_bf16::<0, 4, 6>();
                if blocks == 2 {
                    unit.dot_bf16::<1, 4, 7>();
                }
                if groups == 2 {
                    unit.dot_bf16::<2, 5, 6>();
                    if blocks == 2 {
                        unit.dot_bf16::<3, 5, 7>();
                    }
                }
            }
        }
        for g in 0..groups {
            for b in 0..blocks {
                let c = k.c.add(c_at(g, b)).cast::<u8>();
                match (g, b) {
                    (0, 0) => unit.store::<0>(c, F32_ROW),
                    (0, 1) => unit.store::<1>(c, F32_ROW),
                    (1, 0) => unit.store::<2>(c, F32_ROW),
                    _ => unit.store::<3>(c, F32_ROW),
                }
            }
        }
    }
    unit.release();
    if t.epilogue.bias.is_none() && !t.epilogue.relu {
        return;
    }
    for b in 0..blocks {
        for p in 0..pixels {
            for lane in 0..LANES {
                // SAFETY: inside the output span `run_bf16` checked.
                let v = unsafe { &mut *k.c.add(t.c_offset + b * t.c_block_stride + p * LANES + lane) };
                // As the vector builds: no bias, no addition (`-0 + 0` would turn a negative zero positive).
                *v = t.epilogue.bias.map_or(*v, |bias| *v + bias[b * LANES + lane]);
                if t.epilogue.relu {
                    *v = v.max(0.0);
                }
            }
        }
    }
}

/// [`run_tile`] on the scalar model ([`super::Bf16Isa::AmxModel`]).
pub(super) fn run_on_model(k: CheckedBf16<'_>) {
    run_tile(&mut TileModel::default(), k);
}

/// [`run_tile`] on the CPU's tiles ([`super::Bf16Isa::Amx`]).
#[cfg(target_arch = "x86_64")]
pub(super) fn run_on_hardware(k: CheckedBf16<'_>) {
    let mut tiles = Hardware::new().expect("run_bf16 checked that this CPU has AMX");
    run_tile(&mut tiles, k);
}

/// Measures one thread's `tdpbf16ps` throughput: `iterations` rounds of four on register-resident 16 × 16
/// tiles (the 2 × 2 plan). Returns the FLOPs done (2 per product, 16 · 16 · 32 products per instruction).
/// Panics without AMX.
pub fn dot_peak_flops(iterations: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut tiles = Hardware::new().expect("AMX-BF16 is not available on this CPU");
        tiles.configure(&TileConfig::new([16; TILES], [64; TILES]));
        for _ in 0..iterations {
            tiles.dot_bf16::<0, 4, 6>();
            tiles.dot_bf16::<1, 4, 7>();
            tiles.dot_bf16::<2, 5, 6>();
            tiles.dot_bf16::<3, 5, 7>();
        }
        tiles.release();
        iterations * 4 * (TILE_ROWS * LANES * 32 * 2) as u64
    }
    #[cfg(not(target_arch = "x86_64"))]
    panic!("AMX-BF16 is not available on this CPU ({iterations} iterations asked)")
}

/// Whether this CPU has AMX-BF16 and this process may use it (asked of Linux once, on the first call).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect_and_enable)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect_and_enable() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    // SAFETY: CPUID is always available on x86-64.
    #[allow(unused_unsafe)] // safe since Rust 1.9x, unsafe before
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    // SAFETY: CPUID leaf 1 ECX bit 27 (OSXSAVE) says XGETBV may run.
    #[allow(unused_unsafe)]
    let osxsave = unsafe { __cpuid_count(1, 0) }.ecx & (1 << 27) != 0;
    if !(amx_bf16 && amx_tile && osxsave) {
        return false;
    }
    // SAFETY: XGETBV(0) reads XCR0, allowed when OSXSAVE is set (checked above).
    let xcr0 = unsafe { _xgetbv(0) };
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    request_tile_permission()
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect_and_enable() -> bool {
    false
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` then `ARCH_GET_XCOMP_PERM`: whether Linux grants
/// this process the tile data state. Refused (old kernel, seccomp, too small a signal stack): no AMX.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_GET_XCOMP_PERM: usize = 0x1022;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let syscall = |op: usize, arg: usize| -> isize {
        let ret: isize;
        // SAFETY: arch_prctl with these operations reads its integer argument or writes one u64 to the
        // pointer it is given (a live local below); the kernel clobbers rcx and r11.
        unsafe {
            std::arch::asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL as isize => ret, in("rdi") op, in("rsi") arg,
                out("rcx") _, out("r11") _, options(nostack))
        };
        ret
    };
    if syscall(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0 {
        return false;
    }
    let mut permitted: u64 = 0;
    syscall(ARCH_GET_XCOMP_PERM, &mut permitted as *mut u64 as usize) == 0 && permitted & (1 << XFEATURE_XTILEDATA) != 0
}
