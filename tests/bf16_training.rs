//! Training googlenet-d2l with `--precision bf16` follows the float32 loss curve as closely as PyTorch's
//! own bf16 mixed precision follows float64: the run of `fixtures/generate_loss_curve.py` (formula
//! weights, the committed Fashion-MNIST slice at 32x32, batches of 16, Adam at lr 1e-4 and eps 1e-4,
//! 200 steps), in incept's float32 (direct, no Winograd) and bf16, against PyTorch's float64 run and its
//! five `torch.autocast("cpu", torch.bfloat16)` runs (`fixtures/generate_loss_curve_bf16.py`: the plain
//! inputs and four with every pixel moved by up to one bf16 ulp).
//!
//! The first steps, before training turns chaotic, step by step: incept's bf16 loss no further from its
//! float32 loss than the furthest PyTorch bf16 run is from PyTorch's float64 by then. Then by 50-step
//! means: within the largest distance between two of PyTorch's runs (float64, float32, bf16).

mod common;

use common::fixture::Fixture;
use common::loss_curve::Run;
use incept::graph::{Executor, PlanOptions, Precision, WinogradPolicy};

/// The loss of every step of the fixture's run, in `precision`, without Winograd.
fn losses(run: &Run, precision: Precision, f: &Fixture) -> Vec<f64> {
    run.losses(f, |exec: &mut Executor| {
        exec.set_plan_options(PlanOptions {
            winograd: WinogradPolicy::Off,
            precision,
            ..exec.plan().options
        })
        .unwrap()
    })
}

#[test]
fn bf16_training_follows_the_float32_loss_curve_as_pytorchs_bf16_follows_float64() {
    incept::kernels::flush_denormals_everywhere();
    let f = Fixture::open("loss_curve");
    let bf = Fixture::open("loss_curve_bf16");
    let run = Run::new(&f);
    let f32_run = losses(&run, Precision::F32, &f);
    let bf16_run = losses(&run, Precision::Bf16, &f);
    let steps = f32_run.len();
    let (torch_f64, torch_f32) = (f.named_f64("loss_f64"), f.named_f64("loss_f32"));
    let torch_bf16: Vec<Vec<f64>> = bf
        .named_f64("loss_bf16")
        .chunks_exact(steps)
        .map(<[f64]>::to_vec)
        .collect();
    assert!(torch_bf16.len() >= 5);

    // Step by step while PyTorch's float32 stays within 1e-5 of its float64 (training not yet chaotic).
    let calm = (0..steps)
        .take_while(|&s| (torch_f32[s] - torch_f64[s]).abs() <= 1e-5)
        .count();
    assert!(calm >= 3, "PyTorch's float32 parts from float64 at step {calm}");
    let mut envelope = 0f64;
    for s in 0..calm {
        let furthest = torch_bf16
            .iter()
            .map(|run| (run[s] - torch_f64[s]).abs())
            .fold(0.0, f64::max);
        envelope = envelope.max(furthest);
        let diff = (bf16_run[s] - f32_run[s]).abs();
        eprintln!(
            "step {s}: incept f32 {:.6} bf16 {:.6} |diff| {diff:.1e}; PyTorch f64 {:.6}, its bf16 runs up to {furthest:.1e} from it (largest so far {envelope:.1e})",
            f32_run[s], bf16_run[s], torch_f64[s]
        );
        assert!(
            diff <= envelope,
            "step {s}: incept's bf16 loss {} is {diff:.1e} from its float32 loss {}, past PyTorch bf16's distance from float64 ({envelope:.1e})",
            bf16_run[s],
            f32_run[s]
        );
    }
    // Then by 50-step means, against the largest distance between two of PyTorch's runs.
    let mean = |curve: &[f64], window: &std::ops::Range<usize>| {
        curve[window.clone()].iter().sum::<f64>() / window.len() as f64
    };
    let torch_runs: Vec<&Vec<f64>> = [&torch_f64, &torch_f32].into_iter().chain(&torch_bf16).collect();
    for first in (0..steps).step_by(50) {
        let window = first..(first + 50).min(steps);
        let (ours_f32, ours_bf16) = (mean(&f32_run, &window), mean(&bf16_run, &window));
        let means: Vec<f64> = torch_runs.iter().map(|run| mean(run, &window)).collect();
        let spread = means.iter().fold(f64::MIN, |a, &b| a.max(b)) - means.iter().fold(f64::MAX, |a, &b| a.min(b));
        eprintln!(
            "steps {window:?}: mean loss incept f32 {ours_f32:.4} bf16 {ours_bf16:.4} (|diff| {:.1e}); PyTorch's {} runs {means:.4?} (spread {spread:.1e})",
            (ours_bf16 - ours_f32).abs(),
            torch_runs.len()
        );
        assert!(
            (ours_bf16 - ours_f32).abs() <= spread,
            "steps {window:?}: incept's bf16 mean loss {ours_bf16:.4} vs float32 {ours_f32:.4}, further apart than PyTorch's runs ({spread:.1e})"
        );
    }
}
