//! bfloat16, the 16-bit format the reduced-precision kernels read: float32's sign and 8 exponent bits
//! with 7 of its 23 fraction bits, so a bf16 value is the top half of a float32's bits.
//!
//! This module is the format's one definition, and the scalar model every bf16 kernel must equal:
//! - [`from_f32`]: float32 to bf16 rounded to nearest, ties to even, with denormals flushed to zero,
//!   as `vcvtneps2bf16` does (and as the CPUs' bf16 dot products read their inputs);
//! - [`dot_pair`]: one lane of `vdpbf16ps` (AVX512-BF16) and of `tdpbf16ps` (AMX): a pair of bf16
//!   products added into a float32, the odd element's first. Each addition is a fused multiply-add
//!   of the exact product (8 × 8 significant bits fit in float32's 24), rounded to nearest even, with
//!   denormal inputs read as zero and denormal results flushed to zero.
//!
//! Measured on an AMD Zen 5 (EPYC, avx512_bf16): `vdpbf16ps` equals [`dot_pair`] on 3.2 million random
//! lanes (all exponents, denormal accumulators, overflowing products), where the even-first order or
//! separately rounded products differ on 2-6% of them; `vcvtneps2bf16` equals [`from_f32`] on 1.6
//! million random floats including denormals, NaN and infinities. `tests/bf16_kernels.rs` holds each
//! CPU that runs the tests to the same.

/// The bf16 bits of `x`: rounded to nearest, ties to even; a denormal becomes a zero of its sign; a NaN
/// stays a (quiet) NaN.
#[inline]
pub fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Keep the sign and the top of the payload, and make sure a fraction bit survives.
        return ((bits >> 16) | 0x40) as u16;
    }
    if x.is_subnormal() {
        return ((bits >> 16) & 0x8000) as u16;
    }
    // Adding 0x7fff plus the lowest kept bit rounds the dropped half to nearest, ties to even; a carry
    // into the exponent is the correct rounding up (to infinity past the largest finite value).
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// The float32 value of bf16 bits `b` (exact).
#[inline]
pub fn to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// `x` rounded to the nearest bf16 value, as a float32: `to_f32(from_f32(x))`.
#[inline]
pub fn round(x: f32) -> f32 {
    to_f32(from_f32(x))
}

/// Zero of the same sign for a denormal, else `x`: how the bf16 dot products read and write values.
#[inline]
fn flush(x: f32) -> f32 {
    if x.is_subnormal() { 0f32.copysign(x) } else { x }
}

/// One lane of `vdpbf16ps` / `tdpbf16ps`: `acc + a[1]·b[1] + a[0]·b[0]`, the odd products first, each
/// addition one rounding of the exact product's sum, denormals read as zero and flushed from results.
#[inline]
pub fn dot_pair(acc: f32, a: [u16; 2], b: [u16; 2]) -> f32 {
    let odd = flush(to_f32(a[1])).mul_add(flush(to_f32(b[1])), flush(acc));
    flush(flush(to_f32(a[0])).mul_add(flush(to_f32(b[0])), flush(odd)))
}

/// Converts `src` to bf16 bits in `dst` ([`from_f32`] on each value), with AVX512-BF16's
/// `vcvtneps2bf16` where the CPU has it.
pub fn convert(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "bf16 conversion: one output per input");
    #[cfg(target_arch = "x86_64")]
    if crate::microkernel::Bf16Isa::Avx512Bf16.available() {
        // SAFETY: the CPU has AVX512-BF16 (checked just above), and the lengths are equal.
        unsafe { convert_avx512bf16(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = from_f32(s);
    }
}

/// Rounds every value of `x` to bf16 in place ([`round`]).
pub fn round_slice(x: &mut [f32]) {
    for v in x {
        *v = round(*v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
// Stable since Rust 1.89, which the x86-64 build needs anyway (see `microkernel/x86.rs`).
#[allow(clippy::incompatible_msrv)]
/// # Safety
/// The CPU has AVX512-BF16, and `src` and `dst` have the same length.
unsafe fn convert_avx512bf16(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let whole = src.len() / 16 * 16;
    for (s, d) in src[..whole].chunks_exact(16).zip(dst[..whole].chunks_exact_mut(16)) {
        // SAFETY: each chunk holds 16 floats in and 16 bf16 out, one zmm and one ymm.
        unsafe {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(s.as_ptr()));
            _mm256_storeu_si256(d.as_mut_ptr().cast(), std::mem::transmute::<__m256bh, __m256i>(v));
        }
    }
    for (d, &s) in dst[whole..].iter_mut().zip(&src[whole..]) {
        *d = from_f32(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(round(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up.
        assert_eq!(round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(round(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 1.0 + 2f32.powi(-7));
        assert_eq!(round(-3.0), -3.0);
        assert_eq!(round(f32::MAX), f32::INFINITY);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::from_bits(1)).to_bits(), 0);
        assert_eq!(round(-f32::from_bits(1)).to_bits(), 0x8000_0000);
    }

    #[test]
    fn dot_pair_adds_the_odd_product_first() {
        let b = |x: f32| from_f32(x);
        // 2^24 - 1·2^24 cancels first, then 1·1 is added: 1. Even first, 2^24 + 1 rounds back to 2^24
        // (ties to even) and the odd product then gives 0.
        let acc = 2f32.powi(24);
        assert_eq!(dot_pair(acc, [b(1.0), b(-1.0)], [b(1.0), b(acc)]), 1.0);
    }
}
