//! Flush-to-zero / denormals-are-zero reaches the calling thread and every rayon worker. In a binary of
//! its own: the mode is per thread and would otherwise leak into other tests' workers.

use std::hint::black_box;

/// 1e-30 × 1e-10 = 1e-40, below f32's smallest normal (1.2e-38): a denormal unless flushed.
fn tiny_product() -> f32 {
    black_box(1e-30f32) * black_box(1e-10f32)
}

#[test]
fn flushing_denormals_reaches_every_worker() {
    // 1e-40 built from its bits: a denormal input.
    let denormal = black_box(f32::from_bits(0x0001_16c2));
    assert!(tiny_product() > 0.0, "this thread started without flushing");
    assert!(black_box(denormal) * black_box(1.0f32) > 0.0 && !denormal.is_normal());
    incept::kernels::flush_denormals_everywhere();
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert_eq!(tiny_product(), 0.0, "calling thread");
        let workers = rayon::broadcast(|_| tiny_product());
        assert!(workers.iter().all(|&v| v == 0.0), "rayon workers: {workers:?}");
        // A denormal input reads as zero too.
        assert_eq!(black_box(denormal) * black_box(1.0f32), 0.0);
    }
}
