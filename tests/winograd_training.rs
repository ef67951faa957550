//! Training googlenet-d2l with Winograd follows the loss curve of training it without: the first 200
//! steps of the run `fixtures/generate_loss_curve.py` describes (formula weights, the committed
//! Fashion-MNIST slice at 32x32, batches of 16 in order, Adam at lr 1e-4), once with the plan's
//! Winograd F(2,3) layers and once with Winograd off, compared step by step with the spread between
//! PyTorch's float32 and float64 runs of the same steps (the fixture).
//!
//! The spread is tiny for the first steps and then grows as rounding differences are amplified by
//! training (Adam turns the sign of a gradient that is rounding noise into a full step): the first
//! steps are held to the largest spread of PyTorch's runs so far, the whole run by 50-step means
//! against the spread of PyTorch's three runs. The per-layer gradients are held far tighter by
//! `tests/winograd_blocked.rs`; a weight gradient that loses one Winograd point moves step 1 here by
//! only 1.2e-5, and fails on the first 50 steps' mean (4.3e-2 against 2.0e-2). F(4,3) in training
//! failed the same mean (2.2e-2; `Plan::winograd_training_tiles`).

mod common;

use common::fixture::Fixture;
use common::formula_params;
use incept::data::{idx, resample};
use incept::graph::{Executor, PlanOptions, WinogradPolicy};
use incept::models::{self, Model};
use incept::optim::{Adam, Optimizer};
use incept::tensor::Images;
use std::path::Path;

/// The loss of every step of the fixture's run, with Winograd as `policy` allows.
fn losses(model: &Model, images: &[f32], labels: &[usize], policy: WinogradPolicy, f: &Fixture) -> Vec<f64> {
    let steps: usize = f.metadata("steps").parse().unwrap();
    let batch: usize = f.metadata("batch").parse().unwrap();
    let lr: f32 = f.metadata("lr").parse().unwrap();
    let len = images.len() / labels.len();
    let mut exec = Executor::new(model.clone(), batch).unwrap();
    exec.set_plan_options(PlanOptions {
        winograd: policy,
        ..exec.plan().options
    })
    .unwrap();
    let winograd_layers = exec.plan().winograd_training_tiles.iter().flatten().count();
    assert_eq!(
        winograd_layers > 0,
        policy != WinogradPolicy::Off,
        "{policy:?}: {winograd_layers} layers train with Winograd"
    );
    let lens: Vec<usize> = exec.params().iter().map(Vec::len).collect();
    let mut optimizer = Optimizer::Adam(Adam::new(&lens));
    (0..steps)
        .map(|step| {
            let first = (step * batch) % labels.len();
            let x = &images[first * len..(first + batch) * len];
            let y = &labels[first..first + batch];
            exec.train_step(Images::dense(x, batch, len), y, &mut optimizer, lr)
                .unwrap()
                .loss
        })
        .collect()
}

#[test]
fn training_with_winograd_follows_the_direct_loss_curve_within_pytorchs_float32_spread() {
    let f = Fixture::open("loss_curve");
    let size: usize = f.metadata("size").parse().unwrap();
    let count: usize = f.metadata("images").parse().unwrap();
    let (train, _) =
        idx::read_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fashion-mnist-slice")).unwrap();
    let [_, h, w] = train.shape;
    // Pillow's bilinear resize of the bytes, as the fixture's `Image.resize` does.
    let images: Vec<f32> = train.images[..count * h * w]
        .chunks_exact(h * w)
        .flat_map(|image| {
            let bytes: Vec<u8> = image.iter().map(|&v| (v * 255.0).round() as u8).collect();
            resample::resize(&bytes, 1, [h, w], [size, size], resample::Filter::Bilinear)
        })
        .map(|b| f32::from(b) / 255.0)
        .collect();
    let labels = &train.labels[..count];
    let config = models::ModelConfig {
        size: [size, size],
        ..models::default_config("googlenet-d2l").unwrap()
    };
    let graph = models::build("googlenet-d2l", config).unwrap();
    let model = Model {
        params: formula_params(&graph),
        graph,
    };
    let direct = losses(&model, &images, labels, WinogradPolicy::Off, &f);
    let winograd = losses(&model, &images, labels, WinogradPolicy::Accurate, &f);
    let torch = ["loss_f64", "loss_f32", "loss_f32_native"].map(|name| f.named_f64(name));
    // The largest distance between two of PyTorch's three runs (float64, float32, float32 with its own
    // convolutions instead of oneDNN's) at one step: how far legitimate engines land from each other.
    let pytorch_spread = |step: usize| {
        [(0, 1), (0, 2), (1, 2)]
            .iter()
            .map(|&(a, b)| (torch[a][step] - torch[b][step]).abs())
            .fold(0f64, f64::max)
    };
    // The first steps, before PyTorch's float32 run leaves float64's curve by more than 1e-6: each
    // within the largest spread of PyTorch's runs so far, or one float32 rounding step of the loss.
    // After one Adam step two float32 runs differ by 1e-7 to 1e-3: Adam turns the sign of a gradient
    // that is rounding noise into a full step (PyTorch float32 is 3.1e-7 from float64 at step 1, its
    // float32 without oneDNN 7.9e-4; Winograd was 2.5e-7 and 7.1e-7 from the direct path there in two
    // versions of the plan, and F(4,3) 3.5e-7).
    let calm = torch[0]
        .iter()
        .zip(&torch[1])
        .take_while(|(a, b)| (*a - *b).abs() <= 1e-6)
        .count();
    assert!(calm >= 3, "PyTorch's float32 run leaves float64 at step {calm}");
    let mut envelope = 0f64;
    for step in 0..calm {
        envelope = envelope.max(pytorch_spread(step));
        // One float32 unit in the last place at the loss (positive, so the next value up is bits + 1;
        // `f32::next_up` needs Rust 1.86).
        let loss = direct[step] as f32;
        let ulp = f64::from(f32::from_bits(loss.to_bits() + 1) - loss);
        let diff = (winograd[step] - direct[step]).abs();
        eprintln!(
            "step {step}: direct {:.7} winograd {:.7} |diff| {diff:.1e}; PyTorch float64 {:.7}, float32 {:.1e} from it, PyTorch's largest spread so far {envelope:.1e}",
            direct[step],
            winograd[step],
            torch[0][step],
            (torch[1][step] - torch[0][step]).abs()
        );
        assert!(
            diff <= envelope.max(ulp),
            "step {step}: Winograd's loss {} is {diff:.1e} from the direct path's {}, past PyTorch's spread {envelope:.1e} and the loss's float32 rounding {ulp:.1e}",
            winograd[step],
            direct[step]
        );
    }
    // Then training amplifies rounding (float32 PyTorch is 0.1-0.9 from float64 on single steps
    // after step 50), so the curves are compared by their mean over windows of 50 steps: Winograd's
    // from the direct path's within the largest distance between two of PyTorch's three runs.
    let mean = |curve: &[f64], window: &std::ops::Range<usize>| {
        curve[window.clone()].iter().sum::<f64>() / window.len() as f64
    };
    for first in (0..direct.len()).step_by(50) {
        let window = first..(first + 50).min(direct.len());
        let (ours, theirs) = (mean(&direct, &window), mean(&winograd, &window));
        let means = torch.clone().map(|curve| mean(&curve, &window));
        let spread = [(0, 1), (0, 2), (1, 2)]
            .iter()
            .map(|&(a, b)| (means[a] - means[b]).abs())
            .fold(0f64, f64::max);
        eprintln!(
            "steps {window:?}: mean loss direct {ours:.4} Winograd {theirs:.4} (|diff| {:.1e}); PyTorch float64 {:.4} float32 {:.4} float32 native {:.4} (largest |diff| {spread:.1e})",
            (theirs - ours).abs(),
            means[0],
            means[1],
            means[2]
        );
        assert!(
            (theirs - ours).abs() <= spread,
            "steps {window:?}: Winograd's mean loss {theirs:.4} vs the direct path's {ours:.4}, further apart than PyTorch's runs ({spread:.1e})"
        );
    }
}
