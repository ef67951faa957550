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
