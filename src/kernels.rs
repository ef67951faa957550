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

/// Sets flush-to-zero and denormals-are-zero on the calling thread: results too small for a normal f32
/// become 0 and denormal inputs read as 0. Gradients far below the learning signal (Adam's squared
/// gradients in a plateau, for one) would otherwise run through the slow denormal path; their values
/// do not matter to training. A no-op on other architectures.
pub fn flush_denormals_on_this_thread() {
    #[cfg(target_arch = "x86_64")]
    {
        // MXCSR bit 15 is FTZ, bit 6 is DAZ.
        let mut csr: u32 = 0;
        // SAFETY: `stmxcsr` stores the 32-bit control register into `csr`, which is live and aligned;
        // `ldmxcsr` loads it back with two mode bits set, touching no memory but `csr` and no other state.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
            csr |= (1 << 15) | (1 << 6);
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags, readonly));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // FPCR bit 24 is FZ (flush to zero, inputs and outputs).
        let mut fpcr: u64;
        // SAFETY: reading and writing FPCR changes only this thread's floating-point mode.
        unsafe {
            std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags));
            fpcr |= 1 << 24;
            std::arch::asm!("msr fpcr, {}", in(reg) fpcr, options(nomem, nostack, preserves_flags));
        }
    }
}

/// [`flush_denormals_on_this_thread`] on the calling thread and every thread of the current rayon pool
/// (the `incept` command does this at start; library users choose).
pub fn flush_denormals_everywhere() {
    flush_denormals_on_this_thread();
    rayon::broadcast(|_| flush_denormals_on_this_thread());
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

/// `out = x * scale + shift` (batch norm's per-channel affine, forward and eval-mode backward).
pub fn scale_shift(out: &mut [f32], x: &[f32], scale: f32, shift: f32) {
    struct Kernel<'a>(&'a mut [f32], &'a [f32], f32, f32);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            let Kernel(out, x, scale, shift) = self;
            out.iter_mut().zip(x).for_each(|(o, &v)| *o = v * scale + shift);
        }
    }
    vectorize(Kernel(out, x, scale, shift));
}

/// `x = x * scale + shift` in place.
pub fn scale_shift_in_place(x: &mut [f32], scale: f32, shift: f32) {
    struct Kernel<'a>(&'a mut [f32], f32, f32);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            let Kernel(x, scale, shift) = self;
            x.iter_mut().for_each(|v| *v = *v * scale + shift);
        }
    }
    vectorize(Kernel(x, scale, shift));
}

/// Lanes of the f64 accumulators below: independent partial sums let the sums vectorize (a single
/// running sum is a dependency chain the compiler must keep in order).
const SUM_LANES: usize = 8;

/// Per-lane f64 partial sums of `f(i)` over `0..len`, added up at the end.
#[inline(always)]
fn lane_sum(len: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut lanes = [0f64; SUM_LANES];
    let full = len / SUM_LANES * SUM_LANES;
    for base in (0..full).step_by(SUM_LANES) {
        for (l, acc) in lanes.iter_mut().enumerate() {
            *acc += f(base + l);
        }
    }
    (full..len).for_each(|i| lanes[i - full] += f(i));
    lanes.iter().sum()
}

/// Per channel of a blocked plane (`pixels × 16` values, the 16 channels of one block side by side):
/// `Σ over pixels` in f64. Four sets of accumulators take the pixels in turn, so the adds of
/// consecutive pixels do not wait for each other, and are added up as `(s0 + s1) + (s2 + s3)`: a fixed
/// order, whatever the caller's thread count.
pub fn block_lane_sums(plane: &[f32]) -> [f64; 16] {
    struct Kernel<'a>(&'a [f32]);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = [f64; 16];
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> [f64; 16] {
            let mut sets = [[0f64; 16]; 4];
            let mut pixels = self.0.chunks_exact(16);
            for (i, pixel) in (&mut pixels).enumerate() {
                let set = &mut sets[i % 4];
                for (acc, &v) in set.iter_mut().zip(pixel) {
                    *acc += v as f64;
                }
            }
            debug_assert!(pixels.remainder().is_empty(), "whole pixels of 16 channels");
            let mut out = [0f64; 16];
            for (lane, o) in out.iter_mut().enumerate() {
                *o = (sets[0][lane] + sets[1][lane]) + (sets[2][lane] + sets[3][lane]);
            }
            out
        }
    }
    vectorize(Kernel(plane))
}

/// `Σ x` in f64.
pub fn sum(x: &[f32]) -> f64 {
    struct Kernel<'a>(&'a [f32]);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = f64;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> f64 {
            lane_sum(self.0.len(), |i| self.0[i] as f64)
        }
    }
    vectorize(Kernel(x))
}

/// `Σ (x - mean)²` in f64: batch norm's variance pass, given the mean.
pub fn squared_deviation(x: &[f32], mean: f64) -> f64 {
    struct Kernel<'a>(&'a [f32], f64);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = f64;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> f64 {
            let Kernel(x, mean) = self;
            lane_sum(x.len(), |i| (x[i] as f64 - mean).powi(2))
        }
    }
    vectorize(Kernel(x, mean))
}

/// `(Σ dy, Σ dy·(x - mean))` in f64: batch norm's backward sums (the second is `Σ dy·x̂ / rstd`).
pub fn sum_and_dot_centered(dy: &[f32], x: &[f32], mean: f32) -> (f64, f64) {
    struct Kernel<'a>(&'a [f32], &'a [f32], f32);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = (f64, f64);
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> (f64, f64) {
            let Kernel(dy, x, mean) = self;
            let len = dy.len().min(x.len());
            let sum = lane_sum(len, |i| dy[i] as f64);
            let dot = lane_sum(len, |i| dy[i] as f64 * (x[i] - mean) as f64);
            (sum, dot)
        }
    }
    vectorize(Kernel(dy, x, mean))
}

/// `out += a·dy + b·(x - mean) + c`: batch norm's input gradient with its per-channel coefficients
/// folded (the centring comes first so large activations do not cancel).
pub fn add_affine_of_two(out: &mut [f32], dy: &[f32], x: &[f32], mean: f32, [a, b, c]: [f32; 3]) {
    struct Kernel<'a>(&'a mut [f32], &'a [f32], &'a [f32], f32, [f32; 3]);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            let Kernel(out, dy, x, mean, [a, b, c]) = self;
            for ((o, &g), &v) in out.iter_mut().zip(dy).zip(x) {
                *o += a * g + b * (v - mean) + c;
            }
        }
    }
    vectorize(Kernel(out, dy, x, mean, [a, b, c]));
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

    #[test]
    fn batch_norm_kernels_match_plain_loops() {
        let (x, dy) = (values(45, 4), values(45, 5));
        let mut out = vec![0.0; 45];
        scale_shift(&mut out, &x, 0.5, -1.25);
        assert_eq!(out, x.iter().map(|v| v * 0.5 - 1.25).collect::<Vec<_>>());
        let (sum, squares) = (sum(&x), squared_deviation(&x, 0.25));
        let exact_sum: f64 = x.iter().map(|&v| v as f64).sum();
        let exact_squares: f64 = x.iter().map(|&v| (v as f64 - 0.25).powi(2)).sum();
        assert!((sum - exact_sum).abs() < 1e-12 && (squares - exact_squares).abs() < 1e-12);
        let (sum_dy, dot) = sum_and_dot_centered(&dy, &x, 0.5);
        let exact_dot: f64 = dy.iter().zip(&x).map(|(&g, &v)| g as f64 * (v - 0.5) as f64).sum();
        assert!((sum_dy - dy.iter().map(|&v| v as f64).sum::<f64>()).abs() < 1e-12);
        assert!((dot - exact_dot).abs() < 1e-12);
        let before = out.clone();
        add_affine_of_two(&mut out, &dy, &x, 0.5, [2.0, -0.5, 0.25]);
        let want: Vec<f32> = (dy.iter().zip(&x).zip(&before))
            .map(|((&g, &v), &o)| o + (2.0 * g - 0.5 * (v - 0.5) + 0.25))
            .collect();
        assert_eq!(out, want);
    }
}
