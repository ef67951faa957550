//! AMX (Intel's Advanced Matrix Extensions) for bf16: eight tile registers of up to 16 rows × 64 bytes,
//! and `tdpbf16ps`, which adds the product of a 16 × 32 bf16 tile and a 32 × 16 bf16 tile (stored as
//! pairs, `[16 pair-rows][16 columns][2]`) into a 16 × 16 float32 tile.
//!
//! Stable Rust has no AMX intrinsics, so [`Hardware`] assembles every tile instruction with `asm!`. The
//! same tile programs also run on [`TileModel`], a scalar model of the registers and instructions, so
//! their addressing is tested on every CPU; where the CPU has AMX, the tests hold the two to the same bits.
//! A program is written once against [`TileUnit`].
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

/// Where the operands of one 2×2 AMX tile lie, in elements (bf16 for `a` and `b`, float32 for `c`): two
/// groups of `rows` pixels (rows of A and C) by two blocks of 16 output channels (columns of B and C),
/// summed over `runs` of 32 input channels each.
#[derive(Debug, Clone, Copy)]
pub struct AmxTile<'a> {
    /// Pixels per group, 1 to 16.
    pub rows: usize,
    /// `(b offset, a offset)` of each run: 16 pairs of input channels at one kernel tap.
    pub runs: &'a [(usize, usize)],
    /// Between consecutive pixels' 32 input channels in `a`.
    pub a_row_stride: usize,
    /// Between the first pixels of the two groups in `a`.
    pub a_group_stride: usize,
    /// Between the two output blocks' weights in `b` (each `[16 pairs][16 outputs][2]`).
    pub b_block_stride: usize,
    /// Where pixel 0, output block 0 of `c` is; pixels are 16 float32 apart.
    pub c_offset: usize,
    /// Between the two output blocks in `c`.
    pub c_block_stride: usize,
    /// Between the first pixels of the two groups in `c`.
    pub c_group_stride: usize,
    /// Start from `c` instead of zero.
    pub accumulate: bool,
}

/// Computes one 2×2 tile on `unit` (the CPU's tiles, or the model). Panics, naming the operand, if a run
/// or the output would reach outside its slice.
pub fn run_amx<U: TileUnit>(unit: &mut U, tile: &AmxTile<'_>, a: &[u16], b: &[u16], c: &mut [f32]) {
    const PAIRS: usize = 16;
    let rows = tile.rows;
    assert!((1..=TILE_ROWS).contains(&rows), "AMX tile: {rows} rows");
    let a_span = tile.a_group_stride + (rows - 1) * tile.a_row_stride + 2 * PAIRS;
    let b_span = tile.b_block_stride + PAIRS * 2 * 16;
    for &(bo, ao) in tile.runs {
        assert!(
            ao.checked_add(a_span).is_some_and(|end| end <= a.len()),
            "AMX tile: a run at input {ao}"
        );
        assert!(
            bo.checked_add(b_span).is_some_and(|end| end <= b.len()),
            "AMX tile: a run at weight {bo}"
        );
    }
    let c_span = tile.c_group_stride + tile.c_block_stride + rows * 16;
    assert!(
        tile.c_offset.checked_add(c_span).is_some_and(|end| end <= c.len()),
        "AMX tile: the output"
    );
    let r = rows as u8;
    // Accumulators and inputs: `rows` rows of 64 bytes; weights: 16 rows of 16 outputs × 2.
    unit.configure(&TileConfig::new([r, r, r, r, r, r, 16, 16], [64; TILES]));
    let (a, b) = (a.as_ptr().cast::<u8>(), b.as_ptr().cast::<u8>());
    let c_at = |group: usize, block: usize| tile.c_offset + group * tile.c_group_stride + block * tile.c_block_stride;
    let c_ptr = c.as_mut_ptr();
    const F32_ROW: usize = 16 * 4;
    // SAFETY (every load and store below): the spans were checked against the slices just above; each
    // tile row is 64 bytes at most, inside the checked span.
    unsafe {
        if tile.accumulate {
            unit.load::<0>(c_ptr.add(c_at(0, 0)).cast(), F32_ROW);
            unit.load::<1>(c_ptr.add(c_at(0, 1)).cast(), F32_ROW);
            unit.load::<2>(c_ptr.add(c_at(1, 0)).cast(), F32_ROW);
            unit.load::<3>(c_ptr.add(c_at(1, 1)).cast(), F32_ROW);
        } else {
            unit.zero::<0>();
            unit.zero::<1>();
            unit.zero::<2>();
            unit.zero::<3>();
        }
        for &(bo, ao) in tile.runs {
            unit.load::<4>(a.add(2 * ao), 2 * tile.a_row_stride);
            unit.load::<5>(a.add(2 * (ao + tile.a_group_stride)), 2 * tile.a_row_stride);
            unit.load::<6>(b.add(2 * bo), 64);
            unit.load::<7>(b.add(2 * (bo + tile.b_block_stride)), 64);
            unit.dot_bf16::<0, 4, 6>();
            unit.dot_bf16::<1, 4, 7>();
            unit.dot_bf16::<2, 5, 6>();
            unit.dot_bf16::<3, 5, 7>();
        }
        unit.store::<0>(c_ptr.add(c_at(0, 0)).cast(), F32_ROW);
        unit.store::<1>(c_ptr.add(c_at(0, 1)).cast(), F32_ROW);
        unit.store::<2>(c_ptr.add(c_at(1, 0)).cast(), F32_ROW);
        unit.store::<3>(c_ptr.add(c_at(1, 1)).cast(), F32_ROW);
    }
    unit.release();
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
