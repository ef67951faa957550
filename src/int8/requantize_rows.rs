//! A convolution's epilogue on whole rows of blocked pixels: every lane of each 16-lane pixel is
//! [`super::requantize`]d with its output channel's bias and multiplier. The AVX-512 build does the same
//! float32 operations in the same order on 16 lanes at once, so it equals the scalar one bit for bit.

use crate::microkernel::LANES;

/// A build of [`requantize_pixels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequantizeIsa {
    /// [`super::requantize`] lane by lane: every machine.
    Scalar,
    /// AVX-512F: one pixel's 16 lanes per instruction.
    Avx512,
}

impl RequantizeIsa {
    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        match self {
            RequantizeIsa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            RequantizeIsa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            RequantizeIsa::Avx512 => false,
        }
    }

    /// The fastest available build (scalar where [`crate::kernels::scalar_only`] forces the baseline).
    pub fn best() -> RequantizeIsa {
        if !crate::kernels::scalar_only() && RequantizeIsa::Avx512.available() {
            RequantizeIsa::Avx512
        } else {
            RequantizeIsa::Scalar
        }
    }
}

/// `out[p][lane] = requantize(acc[p][lane], bias[lane], multiplier[lane], zero_point, floor)` for every
/// pixel `p` of `acc` (pixels of 16 lanes, one output block's channels). Panics if `isa` is not
/// available or the lengths disagree.
pub fn requantize_pixels(
    isa: RequantizeIsa,
    acc: &[i32],
    bias: &[i32],
    multiplier: &[f32],
    (zero_point, floor): (u8, u8),
    out: &mut [u8],
) {
    assert_eq!(acc.len(), out.len(), "one byte per sum");
    assert_eq!(acc.len() % LANES, 0, "whole pixels of 16 lanes");
    assert!(
        bias.len() == LANES && multiplier.len() == LANES,
        "one bias and multiplier per lane"
    );
    assert!(isa.available(), "{isa:?} is not available on this CPU");
    match isa {
        RequantizeIsa::Scalar => {
            for (acc, out) in acc.chunks_exact(LANES).zip(out.chunks_exact_mut(LANES)) {
                for lane in 0..LANES {
                    out[lane] = super::requantize(acc[lane], bias[lane], multiplier[lane], zero_point, floor);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` checked AVX-512F; the lengths are checked above.
        RequantizeIsa::Avx512 => unsafe { avx512(acc, bias, multiplier, zero_point, floor, out) },
        #[cfg(not(target_arch = "x86_64"))]
        RequantizeIsa::Avx512 => unreachable!("not available"),
    }
}

/// The AVX-512 build: per pixel, the integer add, the conversion, the product, the rounding to nearest
/// even, the zero point and the clamp in float32 (as the scalar formula), then the truncating conversion
/// of an integral value in `[floor, 255]` and a narrowing store.
///
/// # Safety
/// The CPU has AVX-512F; `acc` and `out` have the same length, a multiple of 16; `bias` and
/// `multiplier` have 16 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::incompatible_msrv)]
unsafe fn avx512(acc: &[i32], bias: &[i32], multiplier: &[f32], zero_point: u8, floor: u8, out: &mut [u8]) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's lengths bound every load and store; none needs alignment.
    unsafe {
        let bias = _mm512_loadu_si512(bias.as_ptr().cast());
        let multiplier = _mm512_loadu_ps(multiplier.as_ptr());
        let zero_point = _mm512_set1_ps(f32::from(zero_point));
        let floor = _mm512_set1_ps(f32::from(floor));
        let top = _mm512_set1_ps(255.0);
        for p in 0..acc.len() / LANES {
            let sum = _mm512_add_epi32(_mm512_loadu_si512(acc.as_ptr().add(p * LANES).cast()), bias);
            let scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), multiplier);
            let rounded = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(scaled);
            let q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(rounded, zero_point), floor), top);
            let bytes = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(q));
            _mm_storeu_si128(out.as_mut_ptr().add(p * LANES).cast(), bytes);
        }
    }
}
