//! Allocations of a warm training step (forward, loss, backward, Adam update of googlenet-d2l), counted
//! by a global allocator. incept's own buffers are planned once: activations, gradients, argmaxes,
//! scratch and weight-gradient partials are reused, so a warm step allocates exactly what the one
//! before it did, and nothing of incept's. The `gemm` crate, though, allocates its packing buffers
//! inside every call (gemm-common's `MemBuffer::new` per call; its API takes no caller buffer), and
//! those remain: the test prints how many and how large.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use incept::graph::Executor;
use incept::models::{self, Model, ModelConfig};
use incept::optim::{Adam, Optimizer};
use incept::tensor::Images;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which is passed through as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn warm_training_steps_allocate_the_same_each_time() {
    let config = ModelConfig {
        size: [32, 32],
        ..models::default_config("googlenet-d2l").unwrap()
    };
    let model = Model::init(models::build("googlenet-d2l", config).unwrap(), 0);
    let batch = 8;
    let lens: Vec<usize> = model.graph.params.iter().map(|p| p.len()).collect();
    let mut exec = Executor::new(model, batch).unwrap();
    let mut opt = Optimizer::Adam(Adam::new(&lens));
    let x: Vec<f32> = (0..batch * 32 * 32).map(|i| (i % 97) as f32 / 97.0).collect();
    let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
    let mut step = || {
        exec.train_step(Images::dense(&x, batch, 32 * 32), &labels, &mut opt, 1e-3)
            .unwrap();
    };
    // Warm-up: gradient buffers, per-thread scratch and the weight-gradient partials reach full size.
    step();
    step();
    let mut measure = || {
        let (n0, b0) = (ALLOCATIONS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
        step();
        (
            ALLOCATIONS.load(Ordering::Relaxed) - n0,
            BYTES.load(Ordering::Relaxed) - b0,
        )
    };
    let first = measure();
    let second = measure();
    eprintln!(
        "a warm training step (batch 8, 32x32): {} allocations, {:.1} MB (the gemm crate allocates packing buffers inside each call)",
        first.0,
        first.1 as f64 / 1e6
    );
    assert_eq!(
        first, second,
        "a warm step must allocate exactly what the previous one did (nothing grows)"
    );
}
