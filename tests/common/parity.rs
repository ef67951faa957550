//! One training-mode batch against float64 PyTorch (`fixtures/generate_family.py`): the loss, every
//! parameter's gradient and the running statistics after the batch.
//!
//! A gradient is piecewise smooth: each ReLU input and each max-pool window decides which piece applies,
//! and a decision within rounding of its kink can go either way in float32, in any engine, moving whole
//! tensors upstream of it by up to several percent. In the batch-normalized models at their native sizes
//! every batch tried has such decisions (see docs/models.md). So the comparison comes in two strengths
//! ([`Limits`]): with every convolution forced to the naive path, which accumulates in float64, incept's
//! forward rounding is far below float32's and no decision flips, and every tensor is held to a flat
//! limit (`Exact`); with the fast algorithms, each tensor is held to a floor or 10× how far float32-sized
//! rounding moves it on this batch (`Float32`): PyTorch float32's distance, or float64's with every layer
//! perturbed by twice the rounding float32 adds there. A structurally zero gradient (a conv bias in
//! front of a batch norm) must be within 10× float32's rounding noise in both.
//!
//! A *conditioned* fixture's batch is the least sensitive the generator found (`generate_family.py`).
//! Unconditioned fixtures (inception-v3, inception-v4, inception-resnet-v2 and googlenet at their sizes,
//! from the earlier generator) also allow for each tensor's sensitivity to a 1e-6 move of the input, and
//! compare only the size of a gradient PyTorch's own float32 cannot get within 5% of.

use super::fixture::Fixture;
use super::rel_l2;
use incept::graph::{Executor, Graph, Mode};
use incept::microkernel::Isa;
use incept::models::Model;
use incept::ops::conv::ConvAlgo;
use incept::tensor::Images;

pub fn values(f: &Fixture, name: &str) -> Vec<f32> {
    f.named(name).iter().copied().collect()
}

/// `generate_family.py`'s `formula_input`: splitmix64 of the flat index, top 24 bits, in [0, 1).
pub fn formula_input(len: usize) -> Vec<f32> {
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

/// Whether the fixture's gradient batch was chosen to be well conditioned (its inputs are then stored).
pub fn conditioned(f: &Fixture) -> bool {
    f.metadata_or("conditioned", "false") == "true"
}

/// The fixture's input `name`, or (for the unconditioned fixtures, whose 299×299 inputs are not stored)
/// the formula's.
pub fn input(f: &Fixture, name: &str, len: usize) -> Vec<f32> {
    if conditioned(f) {
        values(f, name)
    } else {
        formula_input(len)
    }
}

/// Turns dropout off: its draws cannot match another engine's (the generator sets PyTorch's to 0 too).
pub fn without_dropout(model: &mut Model) {
    for node in &mut model.graph.nodes {
        if let incept::graph::Layer::Dropout(d) = &mut node.layer {
            d.p = 0.0;
        }
    }
}

/// What a tensor's relative error is held to.
#[derive(Debug, Clone, Copy)]
pub enum Limits {
    /// Every gradient to this, whatever PyTorch float32 reaches (running statistics to 1e-4).
    Exact(f64),
    /// Every gradient to this floor or 10× how far float32-sized rounding moves it (PyTorch float32's
    /// distance from float64, or float64's under the generator's perturbations), whichever is larger
    /// (running statistics to 1e-4 or 10× float32's distance).
    Float32(f64),
}

/// How one tensor compared: its error and the limit it was held to.
pub struct Compared {
    pub name: String,
    pub err: f64,
    pub limit: f64,
}

/// Runs the fixture's training batch through `model` (weights already set) and compares the loss, every
/// gradient and every running statistic after the batch; panics naming the first tensor over its limit.
/// Returns every comparison, for the caller to report.
pub fn training_batch_matches(name: &str, f: &Fixture, model: Model, limits: Limits) -> Vec<Compared> {
    training_batch_matches_on(name, f, model, limits, Isa::best())
}

/// Every instruction set this CPU can run the microkernel on, slowest first, each with a copy of `model`
/// whose convolutions that the default plan runs [`ConvAlgo::Direct`] are forced to it: so each set runs
/// the plan the fastest one gets (a scalar-only plan would keep the GEMM paths), on its own kernels.
pub fn on_each_isa(model: &Model, batch: usize) -> Vec<(Isa, Model)> {
    let plan = Executor::new(model.clone(), batch).unwrap().plan().clone();
    let mut direct = model.clone();
    for (node, algo) in direct.graph.nodes.iter_mut().zip(&plan.conv_algos) {
        if let (incept::graph::Layer::Conv { conv, .. }, Some(ConvAlgo::Direct)) = (&mut node.layer, algo) {
            conv.algo = ConvAlgo::Direct;
        }
    }
    Isa::ALL
        .into_iter()
        .filter(|isa| isa.available())
        .map(|isa| {
            (
                isa,
                if isa == Isa::best() {
                    model.clone()
                } else {
                    direct.clone()
                },
            )
        })
        .collect()
}

/// [`training_batch_matches`] with every microkernel call on `isa`.
pub fn training_batch_matches_on(name: &str, f: &Fixture, model: Model, limits: Limits, isa: Isa) -> Vec<Compared> {
    let size: usize = f.metadata("grad_size").parse().unwrap();
    let [channels, _, _] = model.graph.input_shape();
    let labels: Vec<usize> = values(f, "labels").iter().map(|&l| l as usize).collect();
    let batch = labels.len();
    let len = channels * size * size;
    let x = input(f, "x_train", batch * len);
    let mut exec = Executor::new(model, batch).unwrap();
    exec.set_isa(isa).unwrap();
    exec.forward(Images::dense(&x, batch, len), Mode::Train).unwrap();
    let loss = exec.loss(&labels).unwrap();
    let torch_loss = values(f, "loss")[0] as f64;
    let f32_loss_error = (values(f, "loss_f32")[0] as f64 - torch_loss).abs() / torch_loss;
    assert!(
        (loss.loss - torch_loss).abs() <= torch_loss.abs() * 1e-5f64.max(10.0 * f32_loss_error),
        "{name}: loss {} vs PyTorch {torch_loss}",
        loss.loss
    );
    exec.update_running_statistics();
    exec.backward().unwrap();
    gradients_match(name, f, exec.graph(), exec.param_grads(), exec.params(), limits, None)
}

/// Compares `grads` (one per parameter of `graph`, empty for running statistics) with the fixture's
/// float64 gradients, and the running statistics in `after` with the fixture's after its batch; panics
/// naming the first tensor over its limit and returns every comparison. `update_of`: when the gradients
/// were read back from one SGD step (`before - after`, lr 1), the weights before it; the rounding of that
/// update (1e-7 of a weight) then joins each limit.
pub fn gradients_match(
    name: &str,
    f: &Fixture,
    graph: &Graph,
    grads: &[Vec<f32>],
    after: &[Vec<f32>],
    limits: Limits,
    update_of: Option<&[Vec<f32>]>,
) -> Vec<Compared> {
    let samples: usize = f.metadata("samples").parse().unwrap();
    let well_conditioned = conditioned(f);
    let largest = graph
        .params
        .iter()
        .filter(|p| p.trainable)
        .map(|p| values(f, &format!("grad_norm/{}", p.name))[0] as f64)
        .fold(0.0, f64::max);
    let l2 = |v: &[f32]| v.iter().map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt();
    let mut compared = Vec::new();
    for (p, ((spec, grad), value)) in graph.params.iter().zip(grads).zip(after).enumerate() {
        let tensor = |kind: &str| values(f, &format!("{kind}/{}", spec.name))[0] as f64;
        // The update's rounding, as a norm (0 for gradients read directly).
        let update_rounding = update_of.map_or(0.0, |before| 1e-7 * l2(&before[p]));
        let (err, limit) = if !spec.trainable {
            assert!(grad.is_empty(), "{}: running statistics get no gradient", spec.name);
            let err = rel_l2(value, &values(f, &format!("after/{}", spec.name)));
            match limits {
                Limits::Exact(_) => (err, 1e-4),
                Limits::Float32(_) => (err, 1e-4f64.max(10.0 * tensor("f32_error"))),
            }
        } else {
            let norm = l2(grad);
            // The generator marks a gradient that is zero in exact arithmetic; what remains is rounding.
            let zero = if well_conditioned {
                tensor("zero") == 1.0
            } else {
                tensor("grad_norm") < 1e-3 * tensor("f32_norm")
            };
            // How far float32 PyTorch lands, or float64 under float32-sized perturbations (the input moved
            // by 1e-6, for an unconditioned batch): what agreement a float32 engine can reach here.
            let f32_error = tensor("f32_error").max(tensor("sensitivity"));
            if zero {
                let noise = tensor("f32_norm").max(1e-7 * largest).max(update_rounding);
                (norm / noise, 10.0)
            } else if !well_conditioned && f32_error > 0.05 {
                let ratio = norm / tensor("grad_norm");
                (ratio.max(1.0 / ratio), 2.0)
            } else {
                let count = samples.min(grad.len());
                let ours: Vec<f32> = (0..count).map(|k| grad[k * grad.len() / count]).collect();
                let err = rel_l2(&ours, &values(f, &format!("grad/{}", spec.name)));
                let norm_err = (norm - tensor("grad_norm")).abs() / tensor("grad_norm");
                let limit = match limits {
                    Limits::Exact(limit) => limit,
                    Limits::Float32(floor) => floor.max(10.0 * f32_error),
                };
                (
                    err.max(norm_err),
                    limit.max(10.0 * update_rounding / tensor("grad_norm")),
                )
            }
        };
        assert!(err <= limit, "{name} {}: error {err:.2e} > {limit:.2e}", spec.name);
        compared.push(Compared {
            name: spec.name.clone(),
            err,
            limit,
        });
    }
    compared
}
