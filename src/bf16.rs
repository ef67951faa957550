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
    let magnitude = bits & 0x7fff_ffff;
    // Adding 0x7fff plus the lowest kept bit rounds the dropped half to nearest, ties to even; a carry
    // into the exponent is the correct rounding up (to infinity past the largest finite value).
    let rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
    // Selects rather than branches, so loops over slices vectorize: a NaN keeps its sign and the top
    // of its payload with a fraction bit forced (quiet); a denormal (or zero) keeps only its sign.
    let nan = (bits >> 16) | 0x40;
    let flushed = (bits >> 16) & 0x8000;
    let out = if magnitude > 0x7f80_0000 {
        nan
    } else if magnitude < 0x0080_0000 {
        flushed
    } else {
        rounded
    };
    out as u16
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
pub(crate) fn flush(x: f32) -> f32 {
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

/// Converts `buf` to bf16 in place ([`from_f32`] on each value) and returns the bf16 values, which
/// occupy the first half of its bytes: a float32 scratch image becomes the bf16 image a kernel reads,
/// without a second buffer.
pub fn convert_in_place(buf: &mut [f32]) -> &[u16] {
    let (len, f32s) = (buf.len(), buf.as_mut_ptr());
    let u16s = f32s.cast::<u16>();
    #[cfg(target_arch = "x86_64")]
    let whole = if crate::microkernel::Bf16Isa::Avx512Bf16.available() {
        // SAFETY: the CPU has AVX512-BF16; see the loop below for why writing behind the reads is sound.
        unsafe { convert_in_place_avx512bf16(f32s, len) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let whole = 0;
    for i in whole..len {
        // SAFETY: value `i` is read before bf16 `i` (bytes 2i..2i+2) is written, and those bytes belong
        // to float32 values `≤ i`, already read; both are inside `buf`, which is exclusively borrowed.
        unsafe { u16s.add(i).write(from_f32(f32s.add(i).read())) };
    }
    // SAFETY: the first `len` bf16 values were all written above, inside `buf`'s bytes, and the returned
    // slice keeps `buf` borrowed.
    unsafe { std::slice::from_raw_parts(u16s, len) }
}

/// The first `len / 16 · 16` values of [`convert_in_place`] with `vcvtneps2bf16`; returns that count.
///
/// # Safety
/// The CPU has AVX512-BF16, and `f32s` points to `len` writable values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
#[allow(clippy::incompatible_msrv)]
unsafe fn convert_in_place_avx512bf16(f32s: *mut f32, len: usize) -> usize {
    use std::arch::x86_64::*;
    let whole = len / 16 * 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: 16 values at `i` are read into a register before 32 bytes at bf16 `i` are written:
        // bytes 2i..2i+32, float32 values i/2..i/2+8, which this step or an earlier one has read.
        unsafe {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(f32s.add(i)));
            _mm256_storeu_si256(
                f32s.cast::<u16>().add(i).cast(),
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
        }
    }
    whole
}

/// Converts pairs of 16-lane pixels to bf16 interleaved by lane: for each 32 values of `src` (pixel
/// `a` then pixel `b`, 16 lanes each), `out` gets `a[0], b[0], a[1], b[1], ...`, each [`from_f32`]. The
/// layout of a pair of pixels in bf16 weight gradients; `vcvtne2ps2bf16` and a word permute where the
/// CPU has AVX512-BF16.
pub fn interleave_pixel_pairs(src: &[f32], out: &mut [u16]) {
    assert_eq!(src.len(), out.len(), "bf16 interleave: one output per input");
    assert_eq!(src.len() % 32, 0, "bf16 interleave: whole pairs of 16-lane pixels");
    #[cfg(target_arch = "x86_64")]
    if crate::microkernel::Bf16Isa::Avx512Bf16.available() {
        // SAFETY: the CPU has AVX512-BF16; the lengths were checked above.
        unsafe { interleave_avx512bf16(src, out) };
        return;
    }
    for (s, o) in src.chunks_exact(32).zip(out.chunks_exact_mut(32)) {
        let (a, b) = s.split_at(16);
        for (lane, pair) in o.chunks_exact_mut(2).enumerate() {
            pair[0] = from_f32(a[lane]);
            pair[1] = from_f32(b[lane]);
        }
    }
}

/// [`interleave_pixel_pairs`] with AVX512-BF16.
///
/// # Safety
/// The CPU has AVX512-BF16; `src` and `out` have the same length, a multiple of 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
#[allow(clippy::incompatible_msrv)]
unsafe fn interleave_avx512bf16(src: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    // Word i of the result takes word i/2 of a (the low half) for even i, 16 + i/2 (b) for odd i.
    let order: [i16; 32] = std::array::from_fn(|i| (i / 2 + 16 * (i % 2)) as i16);
    // SAFETY: `order` holds 32 words, one zmm.
    let order = unsafe { _mm512_loadu_si512(order.as_ptr().cast()) };
    for (s, o) in src.chunks_exact(32).zip(out.chunks_exact_mut(32)) {
        // SAFETY: each chunk holds 32 floats in (two zmm) and 32 bf16 out (one zmm).
        unsafe {
            let (a, b) = (_mm512_loadu_ps(s.as_ptr()), _mm512_loadu_ps(s.as_ptr().add(16)));
            // b's words in the high half, a's in the low half.
            let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
            _mm512_storeu_si512(o.as_mut_ptr().cast(), _mm512_permutexvar_epi16(order, both));
        }
    }
}

/// A float32 scratch buffer as bf16 storage for twice as many values.
pub fn as_bf16_scratch(buf: &mut [f32]) -> &mut [u16] {
    // SAFETY: u16 has no invalid bit patterns and a smaller alignment than f32; the bytes are the same
    // and the borrow is carried over.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u16>(), buf.len() * 2) }
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
    fn conversion_in_place_equals_conversion() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.377).sin() * 1e3).collect();
        let expected: Vec<u16> = x.iter().map(|&v| from_f32(v)).collect();
        let mut buf = x.clone();
        assert_eq!(convert_in_place(&mut buf), expected);
    }

    #[test]
    fn interleaving_pairs_equals_converting_each_value() {
        let src: Vec<f32> = (0..32 * 5).map(|i| (i as f32 * 0.731).cos() * 7.0).collect();
        let mut out = vec![0u16; src.len()];
        interleave_pixel_pairs(&src, &mut out);
        for (p, (s, o)) in src.chunks_exact(32).zip(out.chunks_exact(32)).enumerate() {
            for lane in 0..16 {
                assert_eq!(o[2 * lane], from_f32(s[lane]), "pair {p} lane {lane}");
                assert_eq!(o[2 * lane + 1], from_f32(s[16 + lane]), "pair {p} lane {lane}");
            }
        }
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
