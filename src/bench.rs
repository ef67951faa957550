//! Timing a model: median time per batch for inference or a full Adam training step, and optionally
//! where that time goes, node by node. The engine behind `incept bench`.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::graph::{BranchSchedule, Executor, Graph, Mode, NodeTime, PlanOptions, Precision, WinogradPolicy};
use crate::int8::{CalibrationMethod, QuantizedNetwork, Ranges};
use crate::microkernel::{Bf16Isa, Int8Isa, Isa};
use crate::models::Model;
use crate::ops::conv::ConvAlgo;
use crate::optim::{Adam, Optimizer};
use crate::tensor::Images;

/// What to time.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Images per batch.
    pub batch: usize,
    /// A training step (forward, loss, backward, Adam) instead of inference.
    pub train: bool,
    /// Untimed steps first (buffers, caches, thread pool).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// How Inception branches are scheduled.
    pub branches: BranchSchedule,
    /// Also time every node.
    pub profile: bool,
    /// The convolution algorithm forced on every layer (`Auto`: the plan's choice per layer).
    pub conv_algo: ConvAlgo,
    /// Which Winograd transforms inference may run.
    pub winograd: WinogradPolicy,
    /// The arithmetic of the convolutions.
    pub precision: Precision,
}

/// Median milliseconds per batch and images per second of the timed steps.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Median wall time per batch, ms.
    pub ms_per_batch: f64,
    /// `batch / median`.
    pub img_per_s: f64,
    /// Per node, summed over the timed steps (with [`BenchOptions::profile`]).
    pub profile: Option<Vec<NodeTime>>,
    /// Every timed step's wall time, seconds, in order.
    pub times: Vec<f64>,
    /// The instruction set the microkernel ran on.
    pub isa: Isa,
    /// The bf16 microkernel's build, when the convolutions ran in bf16.
    pub bf16_isa: Option<Bf16Isa>,
    /// The int8 microkernel's build, when the network ran in int8 ([`bench_int8`]).
    pub int8_isa: Option<Int8Isa>,
}

/// Mean and standard deviation of step times as the chapter's `time_compute` computes them:
/// `mean = Σt / n`, `std = sqrt(Σt² / n - mean²)` (the population deviation).
pub fn mean_and_std(times: &[f64]) -> (f64, f64) {
    let n = times.len().max(1) as f64;
    let mean = times.iter().sum::<f64>() / n;
    let variance = times.iter().map(|t| t * t).sum::<f64>() / n - mean * mean;
    (mean, variance.max(0.0).sqrt())
}

/// Times `options.steps` steps on random data after `options.warmup` untimed ones.
pub fn bench(model: Model, options: BenchOptions) -> Result<BenchResult> {
    let BenchOptions { batch, train, .. } = options;
    if options.steps == 0 {
        return Err(Error::config(
            "bench",
            "--steps must be at least 1: the median of no timed steps is undefined",
        ));
    }
    let graph = &model.graph;
    let len = graph.nodes[0].image_len();
    // Refused before anything is allocated: the executor's buffers (with the optimizer's state when
    // training) and the random batch.
    let plan_options = PlanOptions {
        conv_algo: options.conv_algo,
        winograd: options.winograd,
        precision: options.precision,
        ..PlanOptions::default()
    };
    let [_, h, w] = graph.input_shape();
    crate::memory::check_batch(
        batch,
        &format!("batch {batch} at {h}x{w}"),
        |b| {
            let mut need = Executor::memory_need(graph, plan_options, b, train)?;
            need.inputs = (4 * len as u64).saturating_mul(b as u64);
            Ok(need)
        },
        |k| match k {
            Some(k) => format!("try --batch {k}"),
            None => "the model does not fit at its input size".to_string(),
        },
    )?;
    let mut rng = fastrand::Rng::with_seed(1);
    let images: Vec<f32> = (0..batch * len).map(|_| rng.f32()).collect();
    let classes = graph.output_len();
    let labels: Vec<usize> = (0..batch).map(|i| i % classes).collect();
    let lens: Vec<usize> = graph.params.iter().map(|p| p.len()).collect();
    let mut exec = Executor::new(model, batch)?;
    exec.set_branch_schedule(options.branches);
    exec.set_plan_options(PlanOptions {
        conv_algo: options.conv_algo,
        winograd: options.winograd,
        precision: options.precision,
        ..exec.plan().options
    })?;
    let mut opt = Optimizer::Adam(Adam::new(&lens));
    let steps = options.steps;
    let mut times = Vec::with_capacity(steps);
    for i in 0..options.warmup + steps {
        if i == options.warmup && options.profile {
            exec.set_profiling(true);
        }
        let t = Instant::now();
        let batch_images = Images::dense(&images, batch, len);
        if train {
            exec.train_step(batch_images, &labels, &mut opt, 1e-3)?;
        } else {
            exec.forward(batch_images, Mode::Eval)?;
        }
        if i >= options.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let (ms_per_batch, img_per_s) = median_rates(&times, batch);
    Ok(BenchResult {
        ms_per_batch,
        img_per_s,
        profile: exec.profile().map(<[NodeTime]>::to_vec),
        times,
        isa: exec.plan().options.isa,
        bf16_isa: exec.plan().options.bf16_kernel(),
        int8_isa: None,
    })
}

/// Median milliseconds per batch and images per second of step times `times` (seconds, at least one).
fn median_rates(times: &[f64], batch: usize) -> (f64, f64) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    (median * 1e3, batch as f64 / median)
}

/// Images the int8 benchmark calibrates on (random, as its weights are).
const INT8_CALIBRATION_IMAGES: usize = 16;

/// Times int8 inference of `model`: its weights quantized after a MinMax calibration on random images
/// (as random as the weights: the time does not depend on the values), then `options.steps` batches of
/// random images after `options.warmup` untimed ones. Only `batch`, `warmup` and `steps` apply.
pub fn bench_int8(model: Model, options: BenchOptions) -> Result<BenchResult> {
    let BenchOptions { batch, .. } = options;
    if options.steps == 0 || batch == 0 {
        return Err(Error::config("bench", "--steps and --batch must be at least 1"));
    }
    if options.train {
        return Err(Error::config("bench", "int8 runs inference only: drop --mode train"));
    }
    let len = model.graph.nodes[0].image_len();
    let mut rng = fastrand::Rng::with_seed(1);
    let calibration: Vec<f32> = (0..INT8_CALIBRATION_IMAGES * len).map(|_| rng.f32()).collect();
    let (graph, params) = (model.graph.clone(), model.params.clone());
    let mut exec = Executor::new(model, INT8_CALIBRATION_IMAGES)?;
    let ranges = Ranges::measure(&mut exec, &calibration, CalibrationMethod::MinMax)?;
    drop(exec);
    let network = QuantizedNetwork::new(&graph, &params, &ranges)?;
    let mut images: Vec<f32> = crate::memory::zeroed(batch * len, "the benchmark's batch of images")?;
    images.iter_mut().for_each(|v| *v = rng.f32());
    let mut times = Vec::with_capacity(options.steps);
    let mut profile: Option<Vec<NodeTime>> = None;
    for i in 0..options.warmup + options.steps {
        let timed = options.profile && i >= options.warmup;
        let t = Instant::now();
        let (logits, node_times) = network.forward_timed(&images, timed)?;
        std::hint::black_box(logits);
        if i >= options.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
        if timed {
            // Thread time over the threads the images ran on: about the wall time per node.
            let threads = crate::parallel::parts(batch) as u32;
            let profile = profile.get_or_insert_with(|| vec![NodeTime::default(); node_times.len()]);
            for (p, t) in profile.iter_mut().zip(node_times) {
                p.calls += 1;
                p.forward += t / threads;
            }
        }
    }
    let (ms_per_batch, img_per_s) = median_rates(&times, batch);
    Ok(BenchResult {
        ms_per_batch,
        img_per_s,
        profile,
        times,
        isa: Isa::best(),
        bf16_isa: None,
        int8_isa: Some(network.isa()),
    })
}

/// The profile as a table, one line per node that took time, with each node's share of the total and
/// its forward GFLOP/s. `steps` is the number of timed steps the profile sums over.
pub fn profile_table(graph: &Graph, profile: &[NodeTime], batch: usize, steps: usize) -> Vec<String> {
    let per_step = |d: Duration| d.as_secs_f64() * 1e3 / steps.max(1) as f64;
    let total: f64 = profile.iter().map(|t| per_step(t.forward) + per_step(t.backward)).sum();
    let mut lines = vec![format!(
        "{:<14} {:<24} {:>9} {:>9} {:>6} {:>9}",
        "node", "op", "fwd ms", "bwd ms", "share", "fwd GF/s"
    )];
    for (node, t) in graph.nodes.iter().zip(profile) {
        let (fwd, bwd) = (per_step(t.forward), per_step(t.backward));
        if fwd + bwd == 0.0 {
            continue;
        }
        let flops = graph.node_flops(node) as f64 * batch as f64;
        let rate = if flops > 0.0 && fwd > 0.0 {
            format!("{:.1}", flops / (fwd * 1e-3) / 1e9)
        } else {
            String::new()
        };
        lines.push(format!(
            "{:<14} {:<24} {:>9.3} {:>9.3} {:>5.1}% {:>9}",
            node.name,
            node.layer.describe(),
            fwd,
            bwd,
            100.0 * (fwd + bwd) / total,
            rate
        ));
    }
    lines.push(format!(
        "{:<14} {:<24} {:>9.3} ms per step in nodes",
        "total", "", total
    ));
    if profile.iter().any(|t| t.concurrent > 0) {
        lines.push("(a concat's forward time is that of its Inception branches, which ran concurrently)".into());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_std_follow_the_chapters_formulas() {
        let (mean, std) = mean_and_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mean, 2.5);
        // Population deviation: sqrt(7.5 - 6.25).
        assert!((std - 1.25f64.sqrt()).abs() < 1e-12);
        assert_eq!(mean_and_std(&[0.5; 10]), (0.5, 0.0));
    }
}
