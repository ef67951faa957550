//! The x86 build of the int8 microkernel (`int8.rs` has the addressing and the model): `vpdpbusd`.

// `_mm512_dpbusd_epi32` and the other AVX-512 intrinsics are stable since Rust 1.89; see `x86.rs`.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

use super::LANES;
use super::int8::CheckedInt8 as Checked;

/// The input quad at `x + at`, as one 32-bit value (four u8, the first low).
///
/// # Safety
/// `x + at + 3` is inside the input slice (`check` bounded it).
#[inline(always)]
unsafe fn quad(x: *const u8, at: usize) -> i32 {
    // SAFETY: the caller's bound; the quad may not be 4-byte aligned.
    unsafe { x.add(at).cast::<i32>().read_unaligned() }
}

/// `acc[b][p] = vpdpbusd(acc[b][p], quad(p), w[b])` for every listed block and pixel.
macro_rules! dots {
    ($acc:ident, $w:ident, $x:ident, $stride:expr, $step:expr, $bs:tt, [$($p:literal),+]) => {
        $( dots!(@pixel $acc, $w, _mm512_set1_epi32(quad($x, $p * $stride + $step)), $p, $bs); )+
    };
    (@pixel $acc:ident, $w:ident, $xv:expr, $p:literal, [$($b:literal),+]) => {{
        let xv = $xv;
        $( $acc[$b][$p] = _mm512_dpbusd_epi32($acc[$b][$p], xv, $w[$b]); )+
    }};
}

/// One `vpdpbusd` tile: `B × P` accumulators, per step `B` weight loads and `P` quad broadcasts.
macro_rules! avx512vnni_tile {
    ($name:ident, [$($b:literal),+], $ps:tt) => {
        /// # Safety
        /// The CPU has AVX512-VNNI, and `k` was checked by `check`.
        #[target_feature(enable = "avx512f,avx512vnni")]
        unsafe fn $name(k: Checked<'_>) {
            const B: usize = [$($b),+].len();
            const P: usize = $ps.len();
            let t = k.tile;
            let mut acc = [[_mm512_setzero_si512(); P]; B];
            let out = |b: usize, p: usize| t.c_offset + b * t.c_block_stride + p * LANES;
            // SAFETY (every pointer access below): `check` bounded each run's weight and input spans and
            // the output span by the lengths of the slices these pointers came from.
            unsafe {
                if t.epilogue.accumulate {
                    for (b, acc_b) in acc.iter_mut().enumerate() {
                        for (p, a) in acc_b.iter_mut().enumerate() {
                            *a = _mm512_loadu_si512(k.c.add(out(b, p)).cast());
                        }
                    }
                }
                for &(wo, xo) in t.runs {
                    let (w, x) = (k.w.add(wo), k.x.add(xo));
                    for step in 0..t.depth {
                        let wv = [$( _mm512_loadu_si512(w.add($b * t.w_block_stride + step * 4 * LANES).cast()) ),+];
                        dots!(acc, wv, x, t.x_pixel_stride, 4 * step * t.x_depth_stride, [$($b),+], $ps);
                    }
                }
                for (b, acc_b) in acc.iter().enumerate() {
                    for (p, &a) in acc_b.iter().enumerate() {
                        _mm512_storeu_si512(k.c.add(out(b, p)).cast(), a);
                    }
                }
            }
        }
    };
}

mod avx512vnni {
    use super::*;
    every_shape!(avx512vnni_tile);
}

pub(super) use avx512vnni::dispatch as dispatch_avx512vnni;
