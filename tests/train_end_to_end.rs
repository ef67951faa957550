//! Training end to end on the committed Fashion-MNIST slice (fixtures/fashion-mnist-slice: 512 training
//! and 256 test images), at 32×32 to keep the test short: the loss falls, checkpoints save, a resumed
//! run continues exactly, and eval runs. Plus the command-line one-step SGD parity with PyTorch.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture::Fixture;
use common::{TempDir, formula_params, rel_l2, write_npy_f32, write_npy_i64};
use incept::data::idx;
use incept::graph::Executor;
use incept::io::checkpoint::{TensorFile, save};
use incept::models::{self, Model, ModelConfig};
use incept::train::{self, OptimizerKind, TrainConfig};

fn slice_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fashion-mnist-slice")
}

fn config(batch: usize, max_steps: Option<u64>) -> TrainConfig {
    TrainConfig {
        config: ModelConfig {
            in_channels: 1,
            size: [32, 32],
            classes: 10,
            aux_heads: false,
        },
        epochs: 50,
        batch,
        seed: 3,
        max_steps,
        ..TrainConfig::default()
    }
}

#[test]
fn training_on_the_fashion_slice_lowers_the_loss_and_eval_runs() {
    let (train_set, test_set) = idx::read_dir(&slice_dir()).unwrap();
    assert_eq!((train_set.len(), test_set.len()), (512, 256));
    let dir = TempDir::new("test-e2e");
    // PyTorch's default initialisation (the chapter's) sits on a plateau near ln 10 for ~24 steps
    // before the loss starts to fall; 48 steps clear it.
    let mut cfg = config(64, Some(48));
    cfg.save = Some(dir.join("ck.safetensors"));
    cfg.metrics = Some(dir.join("metrics.jsonl"));
    // The loss of the untrained model on the training slice, measured the same way as afterwards.
    let untrained = Model::init(models::build("googlenet-d2l", cfg.config).unwrap(), cfg.seed);
    let mut exec = Executor::new(untrained, 64).unwrap();
    let (before, _) = train::evaluate(&mut exec, &train_set, 64, None).unwrap();
    let report = train::train(&cfg, train_set.clone(), &test_set, |_| {}).unwrap();
    assert_eq!(report.global_step, 48);
    let mut exec = Executor::new(report.model.clone(), 64).unwrap();
    let (after, train_acc) = train::evaluate(&mut exec, &train_set, 64, None).unwrap();
    let (test_loss, test_acc) = train::evaluate(&mut exec, &test_set, 64, None).unwrap();
    eprintln!(
        "fashion slice, 48 Adam steps at 32x32: train loss {before:.4} -> {after:.4} (acc {train_acc:.3}), test loss {test_loss:.4} acc {test_acc:.3}"
    );
    assert!(
        after < before - 0.1,
        "the training loss should fall: {before:.4} -> {after:.4}"
    );
    assert!(test_loss.is_finite() && (0.0..=1.0).contains(&test_acc));
    // Six epochs of 8 steps: six metrics lines, the plot, and a checkpoint that loads.
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6, "{metrics}");
    // The picture marks every epoch's train and test loss and accuracy: 6 epochs × 4 points.
    let svg = std::fs::read_to_string(dir.join("metrics.svg")).unwrap();
    assert!(svg.contains("<svg"));
    assert_eq!(svg.matches("<circle").count(), 6 * 4, "one marker per epoch and curve");
    let file = TensorFile::read(&dir.join("ck.safetensors")).unwrap();
    let params = file
        .params_for(&report.model.graph, &dir.join("ck.safetensors"))
        .unwrap();
    assert_eq!(params, report.model.params);
}

#[test]
fn a_resumed_run_continues_exactly() {
    resumed_run_continues_exactly(OptimizerKind::Adam);
}

#[test]
fn a_resumed_rmsprop_run_continues_exactly() {
    // The Inception-v3 paper's settings, centered: every RMSProp buffer is saved and restored.
    resumed_run_continues_exactly(OptimizerKind::RmsProp {
        alpha: 0.9,
        eps: 1.0,
        momentum: 0.9,
        centered: true,
    });
}

fn resumed_run_continues_exactly(optimizer: OptimizerKind) {
    let (train_set, test_set) = idx::read_dir(&slice_dir()).unwrap();
    // 128 images in batches of 32: 4 steps per epoch, so step 3 is mid-epoch and step 6 in the next.
    let train_set = train_set.truncate(128);
    let test_set = test_set.truncate(32);
    let dir = TempDir::new(&format!("test-resume-{}", optimizer_name(optimizer)));
    // Augmented, so the resume must also reproduce each image's crop and flip.
    let config = |batch, steps| TrainConfig {
        optimizer,
        augmentation: incept::data::augment::Augmentation::crop_and_flip(),
        ..config(batch, steps)
    };
    let straight = train::train(&config(32, Some(6)), train_set.clone(), &test_set, |_| {}).unwrap();

    let mut first = config(32, Some(3));
    first.save = Some(dir.join("ck.safetensors"));
    let half = train::train(&first, train_set.clone(), &test_set, |_| {}).unwrap();
    assert_eq!(half.global_step, 3);
    let mut second = config(32, Some(6));
    second.resume = Some(dir.join("ck.safetensors"));
    let resumed = train::train(&second, train_set, &test_set, |_| {}).unwrap();
    assert_eq!(resumed.global_step, 6);
    let differing: Vec<&str> = straight
        .model
        .params
        .iter()
        .zip(&resumed.model.params)
        .zip(&straight.model.graph.params)
        .filter(|((a, b), _)| a != b)
        .map(|(_, spec)| spec.name.as_str())
        .collect();
    assert!(
        differing.is_empty(),
        "a resumed run must match a straight one bit for bit; differing: {differing:?}"
    );
    // The epoch that straddled the resume reports the same metrics as the straight run's.
    assert_eq!(
        straight.epochs.last().unwrap().train_loss,
        resumed.epochs.last().unwrap().train_loss
    );
}

fn optimizer_name(kind: OptimizerKind) -> &'static str {
    match kind {
        OptimizerKind::Adam => "adam",
        OptimizerKind::Sgd { .. } => "sgd",
        OptimizerKind::RmsProp { .. } => "rmsprop",
    }
}

#[test]
fn one_sgd_step_from_the_command_line_changes_every_parameter_as_pytorch_backward_does() {
    let f = Fixture::open("googlenet_d2l");
    let dir = TempDir::new("test-sgd-step");
    let config = ModelConfig {
        size: [32, 32],
        ..models::default_config("googlenet-d2l").unwrap()
    };
    let graph = models::build("googlenet-d2l", config).unwrap();
    let params = formula_params(&graph);
    save(&dir.join("w.safetensors"), &graph, &params, None, &Default::default()).unwrap();
    let x: Vec<f32> = f.named("x32").iter().copied().collect();
    write_npy_f32(&dir.join("x.npy"), &[4, 1, 32, 32], &x);
    let labels: Vec<i64> = f.named("labels").iter().map(|&l| l as i64).collect();
    write_npy_i64(&dir.join("y.npy"), &labels);

    let out = Command::new(env!("CARGO_BIN_EXE_incept"))
        .args([
            "train",
            "--optimizer",
            "sgd",
            "--lr",
            "1",
            "--momentum",
            "0",
            "--steps",
            "1",
            "--no-shuffle",
            "--quiet",
        ])
        .args(["--resize", "32"])
        .arg("--init")
        .arg(dir.join("w.safetensors"))
        .arg("--data-npy")
        .arg(dir.join("x.npy"))
        .arg(dir.join("y.npy"))
        .arg("--out")
        .arg(&*dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "incept train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trained = TensorFile::read(&dir.join("checkpoint.safetensors")).unwrap();
    let new_params = trained.params_for(&graph, &dir.join("checkpoint.safetensors")).unwrap();
    let samples: usize = f.metadata("samples").parse().unwrap();
    let mut worst = 0f64;
    for ((spec, before), after) in graph.params.iter().zip(&params).zip(&new_params) {
        // With lr 1 and no momentum, before - after is the gradient (up to the rounding of the update).
        let count = samples.min(before.len());
        let change: Vec<f32> = (0..count)
            .map(|k| k * before.len() / count)
            .map(|i| (before[i] as f64 - after[i] as f64) as f32)
            .collect();
        let expected: Vec<f32> = f.named(&format!("grad/{}", spec.name)).iter().copied().collect();
        let err = rel_l2(&change, &expected);
        assert!(
            err <= 1e-3,
            "{}: the step changed it unlike PyTorch's gradient: {err:.2e}",
            spec.name
        );
        worst = worst.max(err);
    }
    eprintln!(
        "incept train --optimizer sgd --lr 1 --steps 1 vs PyTorch float64 gradients: worst per-tensor error {worst:.2e}"
    );
}
