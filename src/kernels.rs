//! Runtime SIMD dispatch. Hot loops are written once as plain Rust over fixed-width lanes, wrapped in a
//! small struct implementing [`pulp::WithSimd`] whose `with_simd` calls an `#[inline(always)]` function,
//! and run through [`vectorize`]: `pulp` compiles that body for each instruction set (AVX-512, AVX2+FMA,
//! NEON, ...) and picks the best this CPU has at run time. [`set_scalar_only`] forces the baseline
//! build instead, the scalar path the tests check against the same references.
//!
//! (A closure would not do: its body is a function of its own that the compiler need not inline into
//! pulp's `#[target_feature]` wrapper, and then it runs with baseline instructions.)

use std::sync::atomic::{AtomicBool, Ordering};

static SCALAR_ONLY: AtomicBool = AtomicBool::new(false);

/// Forces (or stops forcing) the baseline path everywhere, for tests and comparisons.
pub fn set_scalar_only(on: bool) {
    SCALAR_ONLY.store(on, Ordering::Relaxed);
}

/// True when the baseline path is forced.
pub fn scalar_only() -> bool {
    SCALAR_ONLY.load(Ordering::Relaxed)
}

/// The instruction set [`vectorize`] uses on this machine, for reports.
pub fn instruction_set() -> &'static str {
    if scalar_only() {
        return "baseline (forced)";
    }
    match pulp::Arch::new() {
        #[cfg(target_arch = "x86_64")]
        pulp::Arch::V4(_) => "AVX-512",
        #[cfg(target_arch = "x86_64")]
        pulp::Arch::V3(_) => "AVX2+FMA",
        #[cfg(target_arch = "aarch64")]
        pulp::Arch::Neon(_) => "NEON",
        _ => "baseline",
    }
}

/// Runs `op` compiled for the best instruction set available (see the module docs).
#[inline(always)]
pub(crate) fn vectorize<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    if scalar_only() {
        op.with_simd(pulp::Scalar::new())
    } else {
        pulp::Arch::new().dispatch(op)
    }
}

/// `x = max(x, 0)`.
pub fn relu_in_place(x: &mut [f32]) {
    struct Kernel<'a>(&'a mut [f32]);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            self.0.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
    vectorize(Kernel(x));
}

/// The ReLU backward through its output: `dy = 0` wherever `y <= 0`.
pub fn relu_mask(dy: &mut [f32], y: &[f32]) {
    struct Kernel<'a>(&'a mut [f32], &'a [f32]);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            for (d, &y) in self.0.iter_mut().zip(self.1) {
                *d = if y > 0.0 { *d } else { 0.0 };
            }
        }
    }
    vectorize(Kernel(dy, y));
}

/// `dx += dy` wherever `y > 0` (a ReLU layer's input gradient, accumulated).
pub fn relu_backward_add(dx: &mut [f32], dy: &[f32], y: &[f32]) {
    struct Kernel<'a>(&'a mut [f32], &'a [f32], &'a [f32]);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            for ((d, &g), &y) in self.0.iter_mut().zip(self.1).zip(self.2) {
                *d += if y > 0.0 { g } else { 0.0 };
            }
        }
    }
    vectorize(Kernel(dx, dy, y));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values around zero (and exactly zero, where `y > 0` decides) of odd length, so every kernel
    /// also runs its remainder lanes.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32 * 2654435761 + seed) % 7) as f32 - 3.0)
            .collect()
    }

    #[test]
    fn elementwise_kernels_match_plain_loops() {
        let (x, y, g) = (values(37, 1), values(37, 2), values(37, 3));
        let mut r = x.clone();
        relu_in_place(&mut r);
        assert_eq!(r, x.iter().map(|v| v.max(0.0)).collect::<Vec<_>>());
        let mut d = g.clone();
        relu_mask(&mut d, &y);
        let masked: Vec<f32> = g.iter().zip(&y).map(|(&g, &y)| if y > 0.0 { g } else { 0.0 }).collect();
        assert_eq!(d, masked);
        let mut acc = x.clone();
        relu_backward_add(&mut acc, &g, &y);
        let added: Vec<f32> = x.iter().zip(&masked).map(|(a, m)| a + m).collect();
        assert_eq!(acc, added);
    }
}
