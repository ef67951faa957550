//! The AVX-512 and AVX2+FMA builds of the microkernel, one monomorphized function per tile shape so the
//! accumulators are a fixed set of registers, and the FMA loops that measure the peak.

// `rust-version` (1.85) is the aarch64 build's floor, Debian trixie's rustc. On x86-64 these AVX-512
// intrinsics need Rust 1.89, as do pulp's and gemm's `x86-v4` kernels: Cargo.toml says so.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

use super::{Checked, LANES};

/// `acc[b][p] += w[b] · x[p]` for every listed block `b` and pixel `p` (AVX-512).
macro_rules! fmas_512 {
    ($acc:ident, $w:ident, $x:ident, $stride:expr, $bs:tt, [$($p:literal),+]) => {
        $( fmas_512!(@pixel $acc, $w, _mm512_set1_ps(*$x.add($p * $stride)), $p, $bs); )+
    };
    (@pixel $acc:ident, $w:ident, $xv:expr, $p:literal, [$($b:literal),+]) => {{
        let xv = $xv;
        $( $acc[$b][$p] = _mm512_fmadd_ps($w[$b], xv, $acc[$b][$p]); )+
    }};
}

/// One AVX-512 tile: `B × P` zmm accumulators; per reduction step, `B` weight loads and `P`
/// broadcasts feed `B × P` FMAs.
macro_rules! avx512_tile {
    ($name:ident, [$($b:literal),+], $ps:tt) => {
        /// # Safety
        /// The CPU has AVX-512F, and `k` was checked by `super::check`.
        #[target_feature(enable = "avx512f")]
        unsafe fn $name(k: Checked<'_>) {
            const B: usize = [$($b),+].len();
            const P: usize = $ps.len();
            let t = k.tile;
            let mut acc = [[_mm512_setzero_ps(); P]; B];
            let out = |b: usize, p: usize| t.c_offset + b * t.c_block_stride + p * LANES;
            // SAFETY (every pointer access below): `check` bounded each run's weight and input spans
            // and the output span by the lengths of the slices these pointers came from.
            unsafe {
                if t.epilogue.accumulate {
                    for (b, acc_b) in acc.iter_mut().enumerate() {
                        for (p, a) in acc_b.iter_mut().enumerate() {
                            *a = _mm512_loadu_ps(k.c.add(out(b, p)));
                        }
                    }
                }
                for &(wo, xo) in t.runs {
                    let (w, x) = (k.w.add(wo), k.x.add(xo));
                    for step in 0..t.depth {
                        let wv = [$( _mm512_loadu_ps(w.add($b * t.w_block_stride + step * LANES)) ),+];
                        let x_step = x.add(step * t.x_depth_stride);
                        fmas_512!(acc, wv, x_step, t.x_pixel_stride, [$($b),+], $ps);
                    }
                }
                for (b, acc_b) in acc.iter().enumerate() {
                    let bias = t.epilogue.bias.map(|bias| _mm512_loadu_ps(bias.as_ptr().add(b * LANES)));
                    for (p, &a) in acc_b.iter().enumerate() {
                        let mut v = bias.map_or(a, |bias| _mm512_add_ps(a, bias));
                        if t.epilogue.relu {
                            v = _mm512_max_ps(v, _mm512_setzero_ps());
                        }
                        _mm512_storeu_ps(k.c.add(out(b, p)), v);
                    }
                }
            }
        }
    };
}

/// `acc[b][p][half] += w[b][half] · x[p]` for every listed block and pixel (AVX2).
macro_rules! fmas_256 {
    ($acc:ident, $w:ident, $x:ident, $stride:expr, $bs:tt, [$($p:literal),+]) => {
        $( fmas_256!(@pixel $acc, $w, _mm256_set1_ps(*$x.add($p * $stride)), $p, $bs); )+
    };
    (@pixel $acc:ident, $w:ident, $xv:expr, $p:literal, [$($b:literal),+]) => {{
        let xv = $xv;
        $(
            $acc[$b][$p][0] = _mm256_fmadd_ps($w[$b][0], xv, $acc[$b][$p][0]);
            $acc[$b][$p][1] = _mm256_fmadd_ps($w[$b][1], xv, $acc[$b][$p][1]);
        )+
    }};
}

/// One AVX2 tile: each block of 16 channels is two ymm halves, so `2 × B × P` accumulators.
macro_rules! avx2_tile {
    ($name:ident, [$($b:literal),+], $ps:tt) => {
        /// # Safety
        /// The CPU has AVX2 and FMA, and `k` was checked by `super::check`.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $name(k: Checked<'_>) {
            const B: usize = [$($b),+].len();
            const P: usize = $ps.len();
            let t = k.tile;
            let mut acc = [[[_mm256_setzero_ps(); 2]; P]; B];
            let out = |b: usize, p: usize, half: usize| t.c_offset + b * t.c_block_stride + p * LANES + half * 8;
            // SAFETY: as in the AVX-512 tiles.
            unsafe {
                if t.epilogue.accumulate {
                    for (b, acc_b) in acc.iter_mut().enumerate() {
                        for (p, acc_bp) in acc_b.iter_mut().enumerate() {
                            for (half, a) in acc_bp.iter_mut().enumerate() {
                                *a = _mm256_loadu_ps(k.c.add(out(b, p, half)));
                            }
                        }
                    }
                }
                for &(wo, xo) in t.runs {
                    let (w, x) = (k.w.add(wo), k.x.add(xo));
                    for step in 0..t.depth {
                        let wv = [$({
                            let at = w.add($b * t.w_block_stride + step * LANES);
                            [_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8))]
                        }),+];
                        let x_step = x.add(step * t.x_depth_stride);
                        fmas_256!(acc, wv, x_step, t.x_pixel_stride, [$($b),+], $ps);
                    }
                }
                for (b, acc_b) in acc.iter().enumerate() {
                    for (p, acc_bp) in acc_b.iter().enumerate() {
                        for (half, &a) in acc_bp.iter().enumerate() {
                            let mut v = match t.epilogue.bias {
                                Some(bias) => _mm256_add_ps(a, _mm256_loadu_ps(bias.as_ptr().add(b * LANES + half * 8))),
                                None => a,
                            };
                            if t.epilogue.relu {
                                v = _mm256_max_ps(v, _mm256_setzero_ps());
                            }
                            _mm256_storeu_ps(k.c.add(out(b, p, half)), v);
                        }
                    }
                }
            }
        }
    };
}

mod avx512 {
    use super::*;
    every_shape!(avx512_tile);
}

mod avx2 {
    use super::*;
    every_shape!(avx2_tile);
}

pub(super) use avx2::dispatch as dispatch_avx2;
pub(super) use avx512::dispatch as dispatch_avx512;

/// Twelve independent zmm FMA chains, `iterations` times: enough chains to cover the FMA latency on two
/// ports (4 cycles × 2), so the loop runs at the FMA throughput.
pub(super) fn fma_loop_avx512(iterations: u64) -> u64 {
    #[target_feature(enable = "avx512f")]
    fn body(iterations: u64) -> [f32; 16] {
        let mut acc = [_mm512_set1_ps(1.0); 12];
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        for _ in 0..iterations {
            for v in &mut acc {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let sum = acc.iter().fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
        let mut out = [0f32; 16];
        // SAFETY: `out` holds 16 floats, one zmm.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sum) };
        out
    }
    // SAFETY: `fma_peak_flops` asserted AVX-512F is available.
    std::hint::black_box(unsafe { body(iterations) });
    iterations * 12 * 16 * 2
}

/// [`fma_loop_avx512`] on ymm registers.
pub(super) fn fma_loop_avx2(iterations: u64) -> u64 {
    #[target_feature(enable = "avx2,fma")]
    fn body(iterations: u64) -> [f32; 8] {
        let mut acc = [_mm256_set1_ps(1.0); 12];
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..iterations {
            for v in &mut acc {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let sum = acc.iter().fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 8 floats, one ymm.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out
    }
    // SAFETY: `fma_peak_flops` asserted AVX2 and FMA are available.
    std::hint::black_box(unsafe { body(iterations) });
    iterations * 12 * 8 * 2
}
