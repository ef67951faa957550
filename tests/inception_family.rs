//! googlenet-bn, inception-v2, inception-tf-cifar, inception-v3, torchvision's googlenet and timm's
//! inception-v4 and inception-resnet-v2 against their PyTorch definitions
//! (`fixtures/generate_family.py`): parameter names and count, eval logits (running statistics calibrated
//! on 16 other images, so the logits depend on the input), and one training-mode batch
//! (loss, the gradient of every parameter against float64 PyTorch, and the batch-norm running statistics
//! after it). The training batch is one the generator checked to have no max-pool maximum or ReLU input
//! within 3e-6 (relative) of flipping.
//!
//! Batch norm over the few values per channel of a 2-image batch on 2×2 maps amplifies rounding: PyTorch's
//! own float32 gradients land a median 3.7e-3 (googlenet-bn) and 1.7e-2 (inception-v2) from its float64
//! ones on these batches, against 3e-7 for inception-tf-cifar, which has no batch norm. So each gradient
//! must match float64 PyTorch to 1e-3, or to 10× PyTorch float32's own distance where that is larger. A
//! Eval logits must match float64 PyTorch to 1e-4, or 3× PyTorch float32's own distance where larger
//! (1.1e-4 googlenet-bn, 4.9e-4 inception-v2, 1.6e-3 inception-v3: batch norm at this initialization
//! amplifies rounding with depth, in eval as well). Inception-v3 in training mode at its initialization is chaotic in the sense of batch-norm mean-field
//! theory (gradients grow exponentially with depth): on its batch of 8 at 299×299, PyTorch's float32 and
//! float64 gradients differ by a median 24%, from 3e-3 at the last block to 20-40% below Mixed_7b. Where
//! PyTorch float32 is more than 5% off float64, only the gradient's size is compared (within 2×).
//! A running statistic likewise must match to 1e-4 or 10× PyTorch float32's distance. A
//! conv bias in front of a batch norm has an exactly-zero true gradient: there ours must be no larger
//! than 10× PyTorch float32's rounding noise.

mod common;

use common::fixture::Fixture;
use common::{assert_state_dict_names, formula_params, rel_l2};
use incept::graph::{Executor, Mode};
use incept::models::{self, Model};
use incept::tensor::Images;

/// The model with the weights the generator gives it.
fn pytorch_model(name: &str, f: &Fixture, size: usize) -> Model {
    let config = models::ModelConfig {
        size: [size, size],
        ..models::default_config(name).unwrap()
    };
    let graph = models::build(name, config).unwrap();
    assert_state_dict_names(&graph, f, name);
    let params = formula_params(&graph);
    let model = Model { graph, params };
    let parameters: usize = f.metadata("parameters").parse().unwrap();
    assert_eq!(
        model.graph.parameter_count(),
        parameters,
        "{name}: PyTorch's parameter count"
    );
    model
}

fn values(f: &Fixture, name: &str) -> Vec<f32> {
    f.named(name).iter().copied().collect()
}

/// `generate_family.py`'s `formula_input`: splitmix64 of the flat index, top 24 bits, in [0, 1).
fn formula_input(len: usize) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f64 / (1u64 << 24) as f64) as f32
        })
        .collect()
}

/// The fixture's input `name`, or for inception-v3 (whose 299×299 inputs are not stored) the formula's.
fn input(f: &Fixture, name: &str, len: usize) -> Vec<f32> {
    if f.metadata("margins_checked") == "false" {
        formula_input(len)
    } else {
        values(f, name)
    }
}

/// Turns dropout off: its draws cannot match another engine's (the generator sets PyTorch's to 0 too).
fn without_dropout(model: &mut Model) {
    for node in &mut model.graph.nodes {
        if let incept::graph::Layer::Dropout(d) = &mut node.layer {
            d.p = 0.0;
        }
    }
}

fn eval_logits_match(name: &str) {
    let f = Fixture::open(&name.replace('-', "_"));
    let size: usize = f.metadata("size").parse().unwrap();
    let model = pytorch_model(name, &f, size);
    let len = 3 * size * size;
    let x = input(&f, "x", 2 * len);
    let logits = values(&f, "logits");
    // The two images' logits must differ, or the comparison says little about the convolutions.
    let spread = rel_l2(&logits[..logits.len() / 2], &logits[logits.len() / 2..]);
    assert!(
        spread > 1e-2,
        "{name}: the fixture's two images give near-identical logits ({spread:.1e})"
    );
    let mut model = model;
    without_dropout(&mut model);
    let mut exec = Executor::new(&model.graph, 2).unwrap();
    // The generator's calibrated running statistics (a float64 training pass over 16 other images).
    for (spec, value) in model.graph.params.iter().zip(&mut model.params) {
        if !spec.trainable {
            *value = values(&f, &format!("calibrated/{}", spec.name));
        }
    }
    let x_images = Images::dense(&x, 2, len);
    exec.forward(&model.graph, &model.params, x_images, Mode::Eval).unwrap();
    let err = rel_l2(&exec.output_vec(&model.graph), &logits);
    // Float64 logits are the reference; PyTorch's own float32 lands this far from them.
    let limit = 1e-4f64.max(3.0 * values(&f, "logits_f32_error")[0] as f64);
    eprintln!(
        "{name} eval logits vs PyTorch float64: relative L2 error {err:.2e}, limit {limit:.1e} (the two images' logits differ by {spread:.2})"
    );
    assert!(
        err <= limit,
        "{name}: logits differ from PyTorch by {err:.2e} (relative L2) > {limit:.1e}"
    );
}

fn training_batch_matches(name: &str) {
    let f = Fixture::open(&name.replace('-', "_"));
    let size: usize = f.metadata("grad_size").parse().unwrap();
    let mut model = pytorch_model(name, &f, size);
    without_dropout(&mut model);
    let labels: Vec<usize> = values(&f, "labels").iter().map(|&l| l as usize).collect();
    let batch = labels.len();
    let x = input(&f, "x_train", batch * 3 * size * size);
    let mut exec = Executor::new(&model.graph, batch).unwrap();
    exec.forward(
        &model.graph,
        &model.params,
        Images::dense(&x, batch, 3 * size * size),
        Mode::Train,
    )
    .unwrap();
    let loss = exec.loss(&model.graph, &labels, 0.0).unwrap();
    let torch_loss = values(&f, "loss")[0] as f64;
    let f32_loss_error = (values(&f, "loss_f32")[0] as f64 - torch_loss).abs() / torch_loss;
    assert!(
        (loss.loss - torch_loss).abs() <= torch_loss.abs() * 1e-5f64.max(10.0 * f32_loss_error),
        "{name}: loss {} vs PyTorch {torch_loss}",
        loss.loss
    );
    exec.update_running_statistics(&model.graph, &mut model.params).unwrap();
    exec.backward(&model.graph, &model.params).unwrap();
    let samples: usize = f.metadata("samples").parse().unwrap();
    // The worst error as a fraction of its tensor's limit.
    let mut worst = (0f64, String::new());
    let (mut zero_like, mut chaotic) = (0, 0);
    for ((spec, grad), value) in model.graph.params.iter().zip(exec.param_grads()).zip(&model.params) {
        let tensor = |kind: &str| values(&f, &format!("{kind}/{}", spec.name))[0] as f64;
        let (err, limit) = if !spec.trainable {
            assert!(grad.is_empty(), "{}: running statistics get no gradient", spec.name);
            let err = rel_l2(value, &values(&f, &format!("after/{}", spec.name)));
            (err, 1e-4f64.max(10.0 * tensor("f32_error")))
        } else {
            let norm = grad.iter().map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt();
            // How far float32 PyTorch lands, or how far float64 moves when the input moves by 1e-6:
            // whichever says this tensor is less well conditioned.
            let f32_error = tensor("f32_error").max(tensor("sensitivity"));
            if tensor("grad_norm") < 1e-3 * tensor("f32_norm") {
                // Float64 says zero where float32 sees rounding noise: a structurally zero gradient
                // (a conv bias in front of a batch norm).
                zero_like += 1;
                (norm / tensor("f32_norm").max(1e-30), 10.0)
            } else if f32_error > 0.05 {
                // Chaotic: PyTorch's own float32 direction is off by more than 5%, so only the size is
                // comparable (see the module docs).
                chaotic += 1;
                let ratio = norm / tensor("grad_norm");
                (ratio.max(1.0 / ratio), 2.0)
            } else {
                let count = samples.min(grad.len());
                let ours: Vec<f32> = (0..count).map(|k| grad[k * grad.len() / count]).collect();
                let err = rel_l2(&ours, &values(&f, &format!("grad/{}", spec.name)));
                let norm_err = (norm - tensor("grad_norm")).abs() / tensor("grad_norm");
                (err.max(norm_err), 1e-3f64.max(10.0 * f32_error))
            }
        };
        assert!(err <= limit, "{name} {}: error {err:.2e} > {limit:.2e}", spec.name);
        if err / limit > worst.0 {
            worst = (err / limit, format!("{} ({err:.2e}, limit {limit:.2e})", spec.name));
        }
    }
    eprintln!(
        "{name} one training batch vs PyTorch float64: worst {:.2} of its limit, {}; {} tensors compared closely, {zero_like} structurally zero and {chaotic} chaotic gradients",
        worst.0,
        worst.1,
        model.graph.params.len() - zero_like - chaotic
    );
}

#[test]
fn googlenet_bn_matches_pytorch() {
    eval_logits_match("googlenet-bn");
    training_batch_matches("googlenet-bn");
}

#[test]
fn inception_v2_matches_pytorch() {
    eval_logits_match("inception-v2");
    training_batch_matches("inception-v2");
}

#[test]
fn googlenet_matches_pytorch() {
    eval_logits_match("googlenet");
    training_batch_matches("googlenet");
}

#[test]
fn inception_v4_matches_pytorch() {
    eval_logits_match("inception-v4");
    training_batch_matches("inception-v4");
}

#[test]
fn inception_resnet_v2_matches_pytorch() {
    eval_logits_match("inception-resnet-v2");
    training_batch_matches("inception-resnet-v2");
}

#[test]
fn inception_v3_matches_pytorch() {
    eval_logits_match("inception-v3");
    training_batch_matches("inception-v3");
}

#[test]
fn inception_tf_cifar_matches_pytorch() {
    eval_logits_match("inception-tf-cifar");
    training_batch_matches("inception-tf-cifar");
}

/// A few Adam steps of `name` on 16 fixed random images with fixed labels: the training loss falls (the
/// network starts memorizing them), the running statistics move, and evaluation runs.
fn trains_for_a_few_steps(name: &str, size: usize) {
    use incept::data::Dataset;
    use incept::train::{self, OptimizerKind, TrainConfig};
    let mut rng = fastrand::Rng::with_seed(7);
    let data = Dataset {
        images: (0..16 * 3 * size * size).map(|_| rng.f32()).collect(),
        labels: (0..16).map(|i| i % 10).collect(),
        shape: [3, size, size],
        from_bytes: false,
    };
    let cfg = TrainConfig {
        model: name.into(),
        config: models::ModelConfig {
            size: [size, size],
            ..models::default_config(name).unwrap()
        },
        epochs: 8,
        batch: 8,
        lr: 1e-3,
        schedule: incept::optim::Schedule::Constant,
        optimizer: OptimizerKind::Adam,
        weight_decay: 0.0,
        label_smoothing: 0.0,
        augmentation: Default::default(),
        normalize: false,
        seed: 1,
        shuffle: true,
        max_steps: None,
        init: None,
        resume: None,
        save: None,
        metrics: None,
        step_log: None,
        progress: false,
    };
    let report = train::train(&cfg, data.clone(), &data, |_| {}).unwrap();
    let (first, last) = (&report.epochs[0], report.epochs.last().unwrap());
    eprintln!(
        "{name}: training loss {:.3} -> {:.3} over {} steps",
        first.train_loss, last.train_loss, report.global_step
    );
    assert!(
        last.train_loss < 0.95 * first.train_loss,
        "{name}: loss {} -> {}",
        first.train_loss,
        last.train_loss
    );
    let initial = Model::init(report.model.graph.clone(), cfg.seed);
    for (spec, (now, before)) in report
        .model
        .graph
        .params
        .iter()
        .zip(report.model.params.iter().zip(&initial.params))
    {
        assert!(now.iter().all(|v| v.is_finite()), "{}: not finite", spec.name);
        if spec.name.ends_with("running_mean") {
            assert_ne!(now, before, "{}: running statistics must move in training", spec.name);
        }
    }
}

#[test]
fn every_family_model_trains_for_a_few_steps() {
    trains_for_a_few_steps("inception-tf-cifar", 32);
    trains_for_a_few_steps("inception-v2", 64);
    trains_for_a_few_steps("googlenet-bn", 96);
    trains_for_a_few_steps("googlenet", 64);
    trains_for_a_few_steps("inception-v4", 75);
    trains_for_a_few_steps("inception-resnet-v2", 75);
    // 75×75, torchvision's smallest input (no auxiliary head there; the parity test trains it at 299).
    trains_for_a_few_steps("inception-v3", 75);
}

#[test]
fn bench_with_the_chapters_protocol_reports_mean_and_deviation_over_100_steps() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_incept"))
        .args([
            "bench",
            "--model",
            "inception-tf-cifar",
            "--batch",
            "2",
            "--protocol",
            "chapter",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Steps 0, 10, ..., 90 printed, then the summary line.
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("step ")).count(),
        10,
        "{stdout}"
    );
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.contains("Forward across 100 steps") && summary.contains("+/-"),
        "{summary}"
    );
}

/// A deep model block by block at 75×75 (`generate_family.py inception-v4-blocks inception-v3-blocks`):
/// its logits say little at this initialization, but each block's output can be held to 10× PyTorch
/// float32's own distance at that depth (1e-7 at the stem, growing to 1e-1 at inception-v4's last block),
/// or 1e-5. Every block kind is thereby checked, the early ones to 1e-4 or better.
fn matches_pytorch_block_by_block(name: &str) {
    let f = Fixture::open(&format!("{}_blocks", name.replace('-', "_")));
    let size: usize = f.metadata("size").parse().unwrap();
    let config = models::ModelConfig {
        size: [size, size],
        ..models::default_config(name).unwrap()
    };
    let graph = models::build(name, config).unwrap();
    let mut params = formula_params(&graph);
    // The generator's calibrated running statistics instead of the formula's.
    for (spec, value) in graph.params.iter().zip(&mut params) {
        if !spec.trainable {
            *value = values(&f, &format!("calibrated/{}", spec.name));
        }
    }
    let len = 3 * size * size;
    let x = formula_input(2 * len);
    let mut exec = Executor::new(&graph, 2).unwrap();
    exec.forward(&graph, &params, Images::dense(&x, 2, len), Mode::Eval)
        .unwrap();
    let samples: usize = f.metadata("samples").parse().unwrap();
    let mut report = Vec::new();
    for (i, node) in f.metadata("nodes").split(',').enumerate() {
        let id = graph.nodes.iter().position(|n| n.name == node).unwrap();
        let out = exec.node_output(id);
        let all: Vec<f32> = (0..2).flat_map(|n| out.get(n).to_vec()).collect();
        let count = samples.min(all.len());
        let ours: Vec<f32> = (0..count).map(|k| all[k * all.len() / count]).collect();
        let err = rel_l2(&ours, &values(&f, &format!("block/{i}")));
        let limit = 1e-5f64.max(10.0 * values(&f, &format!("block_f32_error/{i}"))[0] as f64);
        assert!(err <= limit, "{name} {node}: error {err:.2e} > {limit:.1e}");
        report.push(format!("{err:.0e}"));
    }
    eprintln!(
        "{name} block outputs vs PyTorch float64, stem to last block: {}",
        report.join(" ")
    );
}

#[test]
fn inception_v4_matches_pytorch_block_by_block() {
    matches_pytorch_block_by_block("inception-v4");
}

#[test]
fn inception_v3_matches_pytorch_block_by_block() {
    matches_pytorch_block_by_block("inception-v3");
}
