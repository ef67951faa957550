//! The NEON build of the microkernel (aarch64), one monomorphized function per tile shape as on x86:
//! a block of 16 output channels is four q registers, so a `B × P` tile holds `4 × B × P`
//! accumulators; and the FMA loop that measures the peak.
//!
//! `vfmaq_f32` is a fused multiply-add like x86's `vfmadd` and `f32::mul_add`, so the three builds give
//! identical bits (`tests/microkernel.rs` holds them to it).

use std::arch::aarch64::*;

use super::{Checked, LANES};

/// `acc[b][p][q] += w[b][q] · x[p]` for every listed block `b`, pixel `p` and quarter `q`.
macro_rules! fmas_neon {
    ($acc:ident, $w:ident, $x:ident, $stride:expr, $bs:tt, [$($p:literal),+]) => {
        $( fmas_neon!(@pixel $acc, $w, vld1q_dup_f32($x.add($p * $stride)), $p, $bs); )+
    };
    (@pixel $acc:ident, $w:ident, $xv:expr, $p:literal, [$($b:literal),+]) => {{
        let xv = $xv;
        $(
            $acc[$b][$p][0] = vfmaq_f32($acc[$b][$p][0], $w[$b][0], xv);
            $acc[$b][$p][1] = vfmaq_f32($acc[$b][$p][1], $w[$b][1], xv);
            $acc[$b][$p][2] = vfmaq_f32($acc[$b][$p][2], $w[$b][2], xv);
            $acc[$b][$p][3] = vfmaq_f32($acc[$b][$p][3], $w[$b][3], xv);
        )+
    }};
}

/// One NEON tile: per reduction step, `4 × B` weight loads and `P` broadcast loads feed `4 × B × P`
/// FMAs.
macro_rules! neon_tile {
    ($name:ident, [$($b:literal),+], $ps:tt) => {
        /// # Safety
        /// `k` was checked by `super::check` (which also checked that the CPU has NEON).
        unsafe fn $name(k: Checked<'_>) {
            const B: usize = [$($b),+].len();
            const P: usize = $ps.len();
            let t = k.tile;
            let out = |b: usize, p: usize, quarter: usize| t.c_offset + b * t.c_block_stride + p * LANES + quarter * 4;
            // SAFETY (every pointer access below): `check` bounded each run's weight and input spans
            // and the output span by the lengths of the slices these pointers came from.
            unsafe {
                let mut acc = [[[vdupq_n_f32(0.0); 4]; P]; B];
                if t.epilogue.accumulate {
                    for (b, acc_b) in acc.iter_mut().enumerate() {
                        for (p, acc_bp) in acc_b.iter_mut().enumerate() {
                            for (quarter, a) in acc_bp.iter_mut().enumerate() {
                                *a = vld1q_f32(k.c.add(out(b, p, quarter)));
                            }
                        }
                    }
                }
                for &(wo, xo) in t.runs {
                    let (w, x) = (k.w.add(wo), k.x.add(xo));
                    for step in 0..t.depth {
                        let wv = [$({
                            let at = w.add($b * t.w_block_stride + step * LANES);
                            [vld1q_f32(at), vld1q_f32(at.add(4)), vld1q_f32(at.add(8)), vld1q_f32(at.add(12))]
                        }),+];
                        let x_step = x.add(step * t.x_depth_stride);
                        fmas_neon!(acc, wv, x_step, t.x_pixel_stride, [$($b),+], $ps);
                    }
                }
                for (b, acc_b) in acc.iter().enumerate() {
                    for (p, acc_bp) in acc_b.iter().enumerate() {
                        for (quarter, &a) in acc_bp.iter().enumerate() {
                            let mut v = match t.epilogue.bias {
                                Some(bias) => vaddq_f32(a, vld1q_f32(bias.as_ptr().add(b * LANES + quarter * 4))),
                                None => a,
                            };
                            if t.epilogue.relu {
                                v = vmaxq_f32(v, vdupq_n_f32(0.0));
                            }
                            vst1q_f32(k.c.add(out(b, p, quarter)), v);
                        }
                    }
                }
            }
        }
    };
}

every_shape!(neon_tile);

/// Sixteen independent q-register FMA chains, `iterations` times: enough to cover the FMA latency (4
/// cycles) on the four FP pipes of the wider aarch64 cores (Neoverse V1/V2), so the loop runs at the FMA
/// throughput.
pub(super) fn fma_loop(iterations: u64) -> u64 {
    // SAFETY: NEON is part of every aarch64 target; these intrinsics touch registers only, but for the
    // one store into `out`, which holds 4 floats, one q register.
    let out = unsafe {
        let mut acc = [vdupq_n_f32(1.0); 16];
        let (a, b) = (vdupq_n_f32(0.999_999), vdupq_n_f32(1e-7));
        for _ in 0..iterations {
            for v in &mut acc {
                *v = vfmaq_f32(b, *v, a);
            }
        }
        let sum = acc.iter().fold(vdupq_n_f32(0.0), |s, &v| vaddq_f32(s, v));
        let mut out = [0f32; 4];
        vst1q_f32(out.as_mut_ptr(), sum);
        out
    };
    std::hint::black_box(out);
    iterations * 16 * 4 * 2
}
