//! The x86 builds of the bf16 microkernel (`bf16.rs` has the addressing and the model): `vdpbf16ps`,
//! and its emulation on AVX-512F.

// `_mm512_dpbf16_ps` and the other AVX-512 intrinsics are stable since Rust 1.89; see `x86.rs`.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

use super::LANES;
use super::bf16::CheckedBf16 as Checked;

/// The input pair at `x + at`, as one 32-bit value (two bf16, the even one low).
///
/// # Safety
/// `x + at + 1` is inside the input slice (`check` bounded it).
#[inline(always)]
unsafe fn pair(x: *const u16, at: usize) -> i32 {
    // SAFETY: the caller's bound; bf16 values are 2-byte aligned, so the pair may not be 4-byte aligned.
    unsafe { x.add(at).cast::<i32>().read_unaligned() }
}

/// Loads and stores the accumulators and applies the epilogue; `$step` adds one reduction step.
macro_rules! bf16_tile_body {
    ($k:ident, [$($b:literal),+], $ps:tt, |$t:ident, $acc:ident, $w:ident, $x:ident, $step:ident| $body:block) => {{
        const B: usize = [$($b),+].len();
        const P: usize = $ps.len();
        let $t = $k.tile;
        let t = $t;
        let mut $acc = [[_mm512_setzero_ps(); P]; B];
        let out = |b: usize, p: usize| t.c_offset + b * t.c_block_stride + p * LANES;
        // SAFETY (every pointer access below): `check` bounded each run's weight and input spans and the
        // output span by the lengths of the slices these pointers came from.
        unsafe {
            if t.epilogue.accumulate {
                for (b, acc_b) in $acc.iter_mut().enumerate() {
                    for (p, a) in acc_b.iter_mut().enumerate() {
                        *a = _mm512_loadu_ps($k.c.add(out(b, p)));
                    }
                }
            }
            for &(wo, xo) in t.runs {
                let ($w, $x) = ($k.w.add(wo), $k.x.add(xo));
                for $step in 0..t.depth $body
            }
            for (b, acc_b) in $acc.iter().enumerate() {
                let bias = t.epilogue.bias.map(|bias| _mm512_loadu_ps(bias.as_ptr().add(b * LANES)));
                for (p, &a) in acc_b.iter().enumerate() {
                    let mut v = bias.map_or(a, |bias| _mm512_add_ps(a, bias));
                    if t.epilogue.relu {
                        v = _mm512_max_ps(v, _mm512_setzero_ps());
                    }
                    _mm512_storeu_ps($k.c.add(out(b, p)), v);
                }
            }
        }
    }};
}

/// `acc[b][p] = vdpbf16ps(acc[b][p], w[b], pair(p))` for every listed block and pixel.
macro_rules! dots {
    ($acc:ident, $w:ident, $x:ident, $stride:expr, $step:expr, $bs:tt, [$($p:literal),+]) => {
        $( dots!(@pixel $acc, $w, _mm512_set1_epi32(pair($x, $p * $stride + $step)), $p, $bs); )+
    };
    (@pixel $acc:ident, $w:ident, $xv:expr, $p:literal, [$($b:literal),+]) => {{
        let xv = std::mem::transmute::<__m512i, __m512bh>($xv);
        $( $acc[$b][$p] = _mm512_dpbf16_ps($acc[$b][$p], $w[$b], xv); )+
    }};
}

/// One `vdpbf16ps` tile: `B × P` accumulators, per step `B` weight loads and `P` pair broadcasts.
macro_rules! avx512bf16_tile {
    ($name:ident, [$($b:literal),+], $ps:tt) => {
        /// # Safety
        /// The CPU has AVX512-BF16, and `k` was checked by `check`.
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        unsafe fn $name(k: Checked<'_>) {
            bf16_tile_body!(k, [$($b),+], $ps, |t, acc, w, x, step| {
                let wv: [__m512bh; [$($b),+].len()] = [$(
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add($b * t.w_block_stride + step * 2 * LANES).cast()))
                ),+];
                dots!(acc, wv, x, t.x_pixel_stride, 2 * step * t.x_depth_stride, [$($b),+], $ps);
            })
        }
    };
}

/// `acc[b][p] += w_odd[b]·x_odd(p)`, then `+= w_even[b]·x_even(p)`, for every listed block and pixel.
macro_rules! widened_fmas {
    ($acc:ident, $odd:ident, $even:ident, $x:ident, $stride:expr, $step:expr, $bs:tt, [$($p:literal),+]) => {
        $( widened_fmas!(@pixel $acc, $odd, $even, pair($x, $p * $stride + $step), $p, $bs); )+
    };
    (@pixel $acc:ident, $odd:ident, $even:ident, $pair:expr, $p:literal, [$($b:literal),+]) => {{
        let pair = $pair as u32;
        let x_odd = _mm512_set1_ps(f32::from_bits(pair & 0xffff_0000));
        let x_even = _mm512_set1_ps(f32::from_bits(pair << 16));
        $(
            $acc[$b][$p] = _mm512_fmadd_ps($odd[$b], x_odd, $acc[$b][$p]);
            $acc[$b][$p] = _mm512_fmadd_ps($even[$b], x_even, $acc[$b][$p]);
        )+
    }};
}

/// One tile of the emulation: each block's 16 weight pairs widened into an odd and an even float32
/// vector (the high half kept, the low half shifted up), two FMAs per pair.
macro_rules! avx512_widened_tile {
    ($name:ident, [$($b:literal),+], $ps:tt) => {
        /// # Safety
        /// The CPU has AVX-512F, and `k` was checked by `check`.
        #[target_feature(enable = "avx512f")]
        unsafe fn $name(k: Checked<'_>) {
            bf16_tile_body!(k, [$($b),+], $ps, |t, acc, w, x, step| {
                let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
                let wv = [$( _mm512_loadu_si512(w.add($b * t.w_block_stride + step * 2 * LANES).cast()) ),+];
                let odd = [$( _mm512_castsi512_ps(_mm512_and_si512(wv[$b], high)) ),+];
                let even = [$( _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wv[$b])) ),+];
                widened_fmas!(acc, odd, even, x, t.x_pixel_stride, 2 * step * t.x_depth_stride, [$($b),+], $ps);
            })
        }
    };
}

mod avx512bf16 {
    use super::*;
    every_shape!(avx512bf16_tile);
}

mod avx512 {
    use super::*;
    every_shape!(avx512_widened_tile);
}

pub(super) use avx512::dispatch as dispatch_avx512;
pub(super) use avx512bf16::dispatch as dispatch_avx512bf16;

/// Twenty-four independent `vdpbf16ps` chains, `iterations` times (see `fma_loop_avx512`).
pub(super) fn dot_loop(iterations: u64) -> u64 {
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn body(iterations: u64) -> [f32; 16] {
        let mut acc = [_mm512_set1_ps(1.0); 24];
        // SAFETY: a 512-bit integer vector and a `__m512bh` are the same 64 bytes.
        let (a, b): (__m512bh, __m512bh) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi16(0x3f80)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi16(0x3380)),
            )
        };
        for _ in 0..iterations {
            for v in &mut acc {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
        }
        let sum = acc.iter().fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
        let mut out = [0f32; 16];
        // SAFETY: `out` holds 16 floats, one zmm.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sum) };
        out
    }
    // SAFETY: `dot_peak_flops` asserted AVX512-BF16 is available.
    std::hint::black_box(unsafe { body(iterations) });
    iterations * 24 * 32 * 2
}
