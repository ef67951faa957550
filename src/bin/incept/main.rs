//! The `incept` command: train, eval, predict, summary, bench, models, quantize, export. `main` parses the flags and
//! dispatches; each subcommand is a module of its own, and `args` holds what they share.

mod args;
mod bench;
mod eval;
mod export;
mod models;
mod predict;
mod quantize;
mod summary;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use incept::Result;

#[derive(Parser)]
#[command(
    name = "incept",
    version,
    about = "Train and run GoogLeNet/Inception networks on the CPU"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (defaults: the chapter's recipe for googlenet-d2l on Fashion-MNIST).
    Train(Box<train::TrainArgs>),
    /// The models: input, classes, parameters, GFLOP per image, and whose weights load.
    Models,
    /// Test loss and accuracy of saved weights.
    Eval(eval::EvalArgs),
    /// Classify image files (their most likely classes), or write the logits of a .npy tensor.
    Predict(predict::PredictArgs),
    /// The per-block shape trace, parameter count and FLOPs per image.
    Summary(summary::SummaryArgs),
    /// Median time per batch and images per second.
    Bench(bench::BenchArgs),
    /// Quantize float32 weights to an int8 checkpoint (calibrated on training images) and compare
    /// the two on the test set.
    Quantize(quantize::QuantizeArgs),
    /// Write weights as an ONNX model (ONNX Runtime, OpenVINO, TensorRT run it).
    Export(export::ExportArgs),
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train::train_command(*args),
        Command::Models => models::models_command(),
        Command::Eval(args) => eval::eval_command(args),
        Command::Predict(args) => predict::predict_command(args),
        Command::Summary(args) => summary::summary_command(args),
        Command::Bench(args) => bench::bench_command(args),
        Command::Quantize(args) => quantize::quantize_command(args),
        Command::Export(args) => export::export_command(args),
    }
}

fn main() -> ExitCode {
    // Output piped into a reader that stops early (`incept predict DIR | head`) ends the process as it
    // ends other Unix tools, instead of a panic at the next print: Rust starts with SIGPIPE ignored.
    // SAFETY: restores the default disposition of one signal before any thread starts; no handler is
    // installed, so nothing runs in signal context.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if cli.threads == Some(0) {
        eprintln!("error: --threads must be at least 1 (omit it to use every core)");
        return ExitCode::FAILURE;
    }
    if let Some(threads) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global() {
            eprintln!("error: could not start {threads} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    incept::kernels::flush_denormals_everywhere();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
