//! `incept bench`: median step times, the chapter's timing protocol, and the per-node profile.

use crate::args::{ConvAlgoArg, PrecisionArg};
use clap::ValueEnum;
use incept::Result;
use incept::bench::{self, BenchOptions};
use incept::graph::{BranchSchedule, WinogradPolicy};
use incept::models::{self, Model};

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum BenchMode {
    Infer,
    Train,
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// The model (googlenet-d2l, googlenet-bn, inception-v2, inception-tf-cifar, inception-v3, googlenet,
    /// inception-v4, inception-resnet-v2; default googlenet-d2l, or with --weights the one they record).
    #[arg(long)]
    model: Option<String>,
    /// Time these weights' network instead of random weights (an incept checkpoint, a state_dict, or an
    /// ONNX model with its own graph), at the input size they record.
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Time inference (eval forward) or training steps (forward, backward, Adam).
    #[arg(long, value_enum, default_value = "infer")]
    mode: BenchMode,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps; the median is reported.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// One JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// How Inception branches run: concurrently when the batch is smaller than the thread count
    /// (auto), never, or always.
    #[arg(long, value_enum, default_value = "auto")]
    branches: Branches,
    /// Also print where the time goes, node by node (forward and backward per step).
    #[arg(long)]
    profile: bool,
    /// `chapter`: the chapter's `time_compute` (10 burn-in steps, then 100 timed ones, every 10th
    /// printed, and the mean ± standard deviation seconds per batch), overriding --warmup/--steps.
    #[arg(long, value_enum, default_value = "median")]
    protocol: Protocol,
    /// Force one convolution algorithm on every layer.
    #[arg(long, value_enum, default_value = "auto")]
    conv_algo: ConvAlgoArg,
    /// Winograd 3x3 convolutions: `accurate` F(4,3) and F(2,3) where faster, but only F(2,3) in
    /// inference (and none in training) before a batch norm, which amplifies their rounding; `fast`
    /// F(4,3) before batch norms too in inference; `off`.
    #[arg(long, value_enum, default_value = "accurate")]
    winograd: WinogradArg,
    /// The arithmetic of the convolutions: f32, or bf16 products summed in float32 (no Winograd).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
}

/// `--winograd`: see [`WinogradPolicy`].
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WinogradArg {
    /// The direct microkernel everywhere.
    Off,
    /// F(4x4, 3x3) and F(2x2, 3x3) where faster; F(2x2, 3x3) only before a batch norm.
    Accurate,
    /// F(4x4, 3x3) before batch norms too (inference).
    Fast,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// The median of --steps timed steps after --warmup untimed ones.
    Median,
    /// The chapter's time_compute: 10 burn-in steps, 100 timed, mean ± standard deviation.
    Chapter,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Branches {
    Auto,
    Sequential,
    Concurrent,
}

/// What `incept bench --json` prints.
#[derive(serde::Serialize)]
struct BenchRecord<'a> {
    model: &'a str,
    mode: &'a str,
    batch: usize,
    threads: usize,
    ms_per_batch: f64,
    img_per_s: f64,
    /// The microkernel's instruction set.
    isa: String,
    /// The instruction set of the element-wise kernels (`pulp`'s dispatch).
    simd: &'static str,
    /// `f32`, `bf16` or `int8`.
    precision: &'static str,
    /// The bf16 microkernel's build (bf16 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    bf16_isa: Option<&'static str>,
    /// The int8 microkernel's build (int8 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    int8_isa: Option<&'static str>,
}

/// `incept bench`: time per batch, and where it goes with `--profile`.
pub(crate) fn bench_command(args: BenchArgs) -> Result<()> {
    let BenchArgs {
        model,
        weights,
        batch,
        mode,
        warmup,
        steps,
        json,
        branches,
        profile,
        protocol,
        conv_algo,
        winograd,
        precision,
    } = args;
    let (warmup, steps) = match protocol {
        Protocol::Median => (warmup, steps),
        Protocol::Chapter => (10, 100),
    };
    let (model, m) = match &weights {
        Some(path) => {
            let (name, m, _) = crate::args::load_weights(model, path, None)?;
            (name, m)
        }
        None => {
            let model = model.unwrap_or_else(|| "googlenet-d2l".to_string());
            let graph = models::build(&model, models::default_config(&model)?)?;
            (model, Model::init(graph, 0))
        }
    };
    let graph = m.graph.clone();
    let branches = match branches {
        Branches::Auto => BranchSchedule::Auto,
        Branches::Sequential => BranchSchedule::Sequential,
        Branches::Concurrent => BranchSchedule::Concurrent,
    };
    let options = BenchOptions {
        batch,
        train: mode == BenchMode::Train,
        warmup,
        steps,
        branches,
        profile,
        conv_algo: conv_algo.algo(),
        winograd: match winograd {
            WinogradArg::Off => WinogradPolicy::Off,
            WinogradArg::Accurate => WinogradPolicy::Accurate,
            WinogradArg::Fast => WinogradPolicy::Fast,
        },
        precision: match precision {
            PrecisionArg::Int8 => incept::graph::Precision::F32,
            other => other.precision("bench")?,
        },
    };
    let r = match precision {
        PrecisionArg::Int8 => bench::bench_int8(m, options)?,
        _ => bench::bench(m, options)?,
    };
    let precision_name = match precision {
        PrecisionArg::Int8 => "int8",
        _ => options.precision.name(),
    };
    let mode = if mode == BenchMode::Train { "train" } else { "infer" };
    let threads = incept::parallel::threads();
    if protocol == Protocol::Chapter {
        let info = if mode == "train" { "Forward-backward" } else { "Forward" };
        for (i, t) in r.times.iter().enumerate().step_by(10) {
            println!("step {i}, duration={t:.5}");
        }
        let (mean, std) = bench::mean_and_std(&r.times);
        println!(
            "{model} batch {batch}, {threads} threads: {info} across {} steps, {mean:.3} +/- {std:.3} sec per batch",
            r.times.len()
        );
    } else if json {
        let record = BenchRecord {
            model: &model,
            mode,
            batch,
            threads,
            ms_per_batch: r.ms_per_batch,
            img_per_s: r.img_per_s,
            isa: format!("{:?}", r.isa),
            simd: incept::kernels::instruction_set(),
            precision: precision_name,
            bf16_isa: r.bf16_isa.map(|isa| isa.name()),
            int8_isa: r.int8_isa.map(|isa| isa.name()),
        };
        println!("{}", serde_json::to_string(&record).expect("plain values"));
    } else {
        let kernels = match (r.bf16_isa, r.int8_isa) {
            (_, Some(int8)) => format!(
                "int8 convolutions on {} (weights quantized after calibration on random images)",
                int8.name()
            ),
            (Some(bf16), None) => format!(
                "bf16 convolutions on {}, float32 microkernel on {:?}",
                bf16.name(),
                r.isa
            ),
            (None, None) => format!("microkernel on {:?}", r.isa),
        };
        println!(
            "{model} {mode} batch {batch}, {threads} threads, {kernels}, element-wise kernels on {}: {:.1} ms per batch (median of {steps}), {:.1} img/s",
            incept::kernels::instruction_set(),
            r.ms_per_batch,
            r.img_per_s
        );
    }
    if let Some(profile) = &r.profile {
        for line in bench::profile_table(&graph, profile, batch, steps.max(1)) {
            println!("{line}");
        }
    }
    Ok(())
}
