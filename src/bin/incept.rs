//! The `incept` command: train, eval, predict, summary, bench.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use incept::bench::{self, BenchOptions};
use incept::classifier::Classifier;
use incept::data::augment::Augmentation;
use incept::data::{self, Dataset, cifar, idx, images, npy};
use incept::distributed::{Cluster, SingleProcess};
use incept::graph::plan::{Layout, Plan, PlanOptions};
use incept::graph::{BranchSchedule, Executor, WinogradPolicy};
use incept::io::checkpoint::{InputSize, Recorded, TensorFile, resolve};
use incept::io::output::{check_dir, check_file};
use incept::models::{self, Model};
use incept::ops::conv::ConvAlgo;
use incept::optim::Schedule;
use incept::train::{self, CheckpointEvery, OptimizerKind, TrainConfig};
use incept::{Error, Result};

/// Where Debian's `dataset-fashion-mnist` package installs the four IDX files.
const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

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

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Adam,
    Sgd,
    Rmsprop,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleArg {
    Constant,
    Step,
    Cosine,
}

/// Convolution algorithms that can run every layer, for `train --conv-algo` and `bench --conv-algo`.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum ConvAlgoArg {
    /// Each layer's algorithm as the plan chose it.
    Auto,
    /// Plain loops accumulating in float64 (slow): rounding far below float32's, for checking gradients
    /// against a float64 reference.
    Naive,
    /// im2col + GEMM on every layer.
    Im2col,
    /// incept's microkernel on the blocked channel layout (weights packed once per update).
    Direct,
}

impl ConvAlgoArg {
    fn algo(self) -> ConvAlgo {
        match self {
            ConvAlgoArg::Auto => ConvAlgo::Auto,
            ConvAlgoArg::Naive => ConvAlgo::Naive,
            ConvAlgoArg::Im2col => ConvAlgo::Im2colGemm,
            ConvAlgoArg::Direct => ConvAlgo::Direct,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum BenchMode {
    Infer,
    Train,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DatasetArg {
    /// (Fashion-)MNIST IDX files.
    FashionMnist,
    /// CIFAR-10's binary files (data_batch_1.bin ... data_batch_5.bin, test_batch.bin).
    Cifar10,
}

#[derive(clap::Args)]
struct DataArgs {
    /// The dataset's format.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    dataset: DatasetArg,
    /// Directory with the dataset's files: the (Fashion-)MNIST IDX files (.gz or raw), or CIFAR-10's
    /// binary files.
    #[arg(long, default_value = DEBIAN_FASHION_MNIST)]
    data: PathBuf,
    /// Your own data instead: float32 images [n, c, h, w] and int64 labels [n], as .npy (used for both
    /// training and testing).
    #[arg(long, num_args = 2, value_names = ["IMAGES", "LABELS"])]
    data_npy: Option<Vec<PathBuf>>,
    /// A text file with one class name per line, in label order, recorded in the checkpoint so
    /// `incept predict` names its answers (default: Fashion-MNIST's or CIFAR-10's ten names; none for
    /// --data-npy).
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
}

/// A flag that Ctrl-C (SIGINT) or SIGTERM sets, so training finishes its step, writes the checkpoint and
/// stops; a second signal ends the process at once.
fn stop_on_signal() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopped at once; the last checkpoint written is kept");
            std::process::exit(130);
        }
        eprintln!("\nstopping: finishing this step and writing the checkpoint (Ctrl-C again to quit now)");
    })
    .map_err(|e| Error::config("signals", format!("cannot handle Ctrl-C: {e}")))?;
    Ok(stop)
}

/// This process's own command line with `--resume CHECKPOINT` in place of any `--resume` or
/// `--overwrite` it had: what continues an interrupted run (behind `mpirun -np N` for a run of N > 1
/// ranks; the launcher's other options are not visible to the rank, so a hostfile must be added again).
fn resume_command(checkpoint: &str, ranks: usize) -> String {
    let mut words: Vec<String> = Vec::new();
    if ranks > 1 {
        words.extend(["mpirun".into(), "-np".into(), ranks.to_string()]);
    }
    let mut args = std::env::args();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--resume" => {
                args.next();
            }
            "--overwrite" => {}
            a if a.starts_with("--resume=") => {}
            _ => words.push(arg),
        }
    }
    words.push("--resume".into());
    words.push(checkpoint.into());
    words
        .iter()
        .map(|w| if w.contains(' ') { format!("'{w}'") } else { w.clone() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--checkpoint-every`: `N` steps, `Nm` minutes or `Ns` seconds, N at least 1.
fn parse_checkpoint_every(text: &str) -> std::result::Result<CheckpointEvery, String> {
    let bad = || format!("expected steps (500), minutes (5m) or seconds (90s), at least 1; found {text:?}");
    let (number, unit) = match text.strip_suffix('m') {
        Some(n) => (n, 60),
        None => match text.strip_suffix('s') {
            Some(n) => (n, 1),
            None => (text, 0),
        },
    };
    let n: u64 = number.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(match unit {
        0 => CheckpointEvery::Steps(n),
        seconds => CheckpointEvery::Time(std::time::Duration::from_secs(n * seconds)),
    })
}

/// Refuses to start a fresh run where a previous one left its checkpoint or metrics, unless
/// `overwrite` (which then removes them, so the new run's metrics start empty).
fn guard_previous_run(files: &[&Path], overwrite: bool) -> Result<()> {
    let found: Vec<&&Path> = files.iter().filter(|f| f.exists()).collect();
    if found.is_empty() {
        return Ok(());
    }
    if overwrite {
        for f in found {
            std::fs::remove_file(f).map_err(|e| Error::file(f.display(), e))?;
        }
        return Ok(());
    }
    let list: Vec<String> = found.iter().map(|f| f.display().to_string()).collect();
    Err(Error::config(
        "out",
        format!(
            "a previous run is there ({}): continue it with --resume {}, replace it with --overwrite, or pick another --out",
            list.join(", "),
            files[0].display()
        ),
    ))
}

/// The class names a run records: `--classes FILE`, else the dataset's own (none for `.npy` data); an
/// error when their count is not the model's number of classes.
fn class_names(args: &DataArgs, classes: usize) -> Result<Vec<String>> {
    let names: Vec<String> = match (&args.classes, &args.data_npy, args.dataset) {
        (Some(path), _, _) => data::read_class_names(path)?,
        (None, Some(_), _) => return Ok(Vec::new()),
        (None, None, DatasetArg::FashionMnist) => data::FASHION_MNIST_CLASSES.map(String::from).to_vec(),
        (None, None, DatasetArg::Cifar10) => data::CIFAR10_CLASSES.map(String::from).to_vec(),
    };
    if names.len() != classes {
        return Err(Error::config(
            "classes",
            format!("the model has {classes} classes, the class names list {}", names.len()),
        ));
    }
    Ok(names)
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (defaults: the chapter's recipe for googlenet-d2l on Fashion-MNIST).
    Train(Box<TrainArgs>),
    /// The models: input, classes, parameters, GFLOP per image, and whose weights load.
    Models,
    /// Test loss and accuracy of saved weights.
    Eval(EvalArgs),
    /// Eval-mode logits [n, classes] of a .npy batch, written as float32 .npy.
    Predict(PredictArgs),
    /// The per-block shape trace, parameter count and FLOPs per image.
    Summary(SummaryArgs),
    /// Median time per batch and images per second.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// The model: googlenet-d2l, googlenet-bn, inception-v2, inception-tf-cifar, inception-v3, googlenet, inception-v4, inception-resnet-v2 (`incept models` describes them; default googlenet-d2l, or the one a
    /// --resume checkpoint records).
    #[arg(long)]
    model: Option<String>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Images per training step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Learning rate (of the first epoch, under --schedule).
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// The optimizer; Adam with PyTorch's defaults, or SGD / RMSProp with the flags below.
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerArg,
    /// SGD and RMSProp momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,
    /// SGD Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    /// RMSProp's decay of the squared-gradient average (PyTorch's default 0.99; the Inception-v3
    /// paper's 0.9).
    #[arg(long, default_value_t = 0.99)]
    rmsprop_alpha: f32,
    /// RMSProp's epsilon (PyTorch's default 1e-8; the Inception-v3 paper's 1.0).
    #[arg(long, default_value_t = 1e-8)]
    rmsprop_eps: f32,
    /// Centered RMSProp (normalize by the gradient's variance).
    #[arg(long)]
    rmsprop_centered: bool,
    /// L2 weight decay added to every gradient (PyTorch's `weight_decay`).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Learning-rate schedule over epochs: constant, step (--step-every, --step-gamma) or cosine to 0.
    #[arg(long, value_enum, default_value = "constant")]
    schedule: ScheduleArg,
    /// Step schedule: epochs between decays.
    #[arg(long, default_value_t = 30)]
    step_every: usize,
    /// Step schedule: factor per decay.
    #[arg(long, default_value_t = 0.1)]
    step_gamma: f32,
    /// Label smoothing of the training loss, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Augment training images: a random crop from the image padded by 4 pixels, and a random
    /// horizontal flip (CIFAR-10's usual recipe), before the resize.
    #[arg(long)]
    augment: bool,
    /// Normalize each channel with the training set's mean and standard deviation (recorded in the
    /// checkpoint, so eval and predict apply it too).
    #[arg(long)]
    normalize: bool,
    /// Input size (square) the images are resized to. Default: the size a --resume checkpoint
    /// records, else the images' own size for --data-npy, else the model's native size (96 for
    /// googlenet-d2l, googlenet-bn and inception-v2, 32 for inception-tf-cifar, 224 for googlenet,
    /// 299 for inception-v3, inception-v4 and inception-resnet-v2).
    #[arg(long)]
    resize: Option<usize>,
    /// Seed of the initial weights, the shuffling, dropout and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Stop after N steps in total.
    #[arg(long)]
    steps: Option<u64>,
    /// Keep the training images in file order instead of shuffling them each epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Start from these weights (safetensors, PyTorch names).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Checkpoint path (default: OUT/checkpoint.safetensors).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Continue from a checkpoint saved by a run with the same settings.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Directory for the checkpoint, metrics.jsonl and metrics.svg. A directory that holds a previous
    /// run is refused unless --resume continues it or --overwrite replaces it.
    #[arg(long, default_value = "runs")]
    out: PathBuf,
    /// Replace the run in --out (its checkpoint and metrics) instead of refusing to.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Under mpirun: how long a rank waits for the others at a collective (the per-step sums) before it
    /// stops every rank with an error, in seconds.
    #[cfg(feature = "mpi")]
    #[arg(long, default_value_t = 600)]
    collective_timeout: u64,
    /// Also write the checkpoint within an epoch: every N steps ("500"), or minutes ("5m") or seconds
    /// ("90s") of training. Ctrl-C (or SIGTERM) always finishes the step and writes it.
    #[arg(long, default_value = "5m", value_parser = parse_checkpoint_every)]
    checkpoint_every: CheckpointEvery,
    /// Also write one JSON line per training step (step, loss, correct, images) to this file.
    #[arg(long)]
    step_log: Option<PathBuf>,
    /// Hide the progress bar (and the progress lines printed when stdout is not a terminal).
    #[arg(long)]
    quiet: bool,
    /// Seconds between progress lines when stdout is not a terminal (a log file, a pipe).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    progress_every: u64,
    /// Force one convolution algorithm on every layer.
    #[arg(long, value_enum, default_value = "auto")]
    conv_algo: ConvAlgoArg,
    /// Cut each batch into N groups whose gradients are summed in a fixed tree (default: one per
    /// rank). The weights depend on N, not on the ranks: one process with `--gradient-groups 2` ends
    /// with the bits of `mpirun -np 2`, and 8 groups give the same bits on 1, 2, 4 or 8 ranks. Each
    /// group costs a weight-gradient pass of its own (googlenet-d2l: 2 groups 3.5%, 8 groups 12-22% longer steps).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    gradient_groups: Option<u64>,
    /// Batch norms normalize by the statistics of the whole global batch, summed across the ranks
    /// (PyTorch's SyncBatchNorm), instead of each rank's own images. With it, a model with batch norm
    /// also ends with one process's bits (given the same --gradient-groups). Two more sums per batch
    /// norm in the forward pass, one in the backward.
    #[arg(long)]
    sync_bn: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The model (default: the one the checkpoint records, else the one whose state_dict the file holds).
    #[arg(long)]
    model: Option<String>,
    /// The weights: an incept checkpoint, or a PyTorch state_dict saved as safetensors.
    #[arg(long)]
    weights: PathBuf,
    /// Input size (square) the test images are resized to (default: the checkpoint's, else the
    /// model's native size).
    #[arg(long)]
    resize: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(clap::Args)]
struct PredictArgs {
    /// The model (default: the one the checkpoint records, else the one whose state_dict the file holds).
    #[arg(long)]
    model: Option<String>,
    /// The weights: an incept checkpoint, or a PyTorch state_dict saved as safetensors.
    #[arg(long)]
    weights: PathBuf,
    /// Image files (PNG, JPEG) or directories of them: each is converted to the model's channels,
    /// resized to the checkpoint's input size as torchvision's Resize does, normalized as the run was,
    /// and answered with its most likely classes. A torchvision or timm state_dict gets that library's
    /// ImageNet preprocessing instead (resize, centre crop, normalization).
    #[arg(value_name = "IMAGE|DIR", conflicts_with = "input")]
    images: Vec<PathBuf>,
    /// Instead of image files: the network's input tensor [n, c, h, w] as float32 .npy, at the
    /// checkpoint's input size, fed as given (as PyTorch's `model(x)` takes it: not normalized).
    #[arg(long, requires = "output")]
    input: Option<PathBuf>,
    /// With --input: the tensor holds images in [0, 1]; normalize them as image files are (the
    /// checkpoint's normalization, or the library's for torchvision / timm weights) before the network.
    #[arg(long, requires = "input")]
    normalize_input: bool,
    /// Write the logits [n, classes] as float32 .npy here (required with --input).
    #[arg(long)]
    output: Option<PathBuf>,
    /// How many classes to print per image, most likely first.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Print one JSON object per image (file, then classes with index and probability).
    #[arg(long)]
    json: bool,
    /// Class names, one per line in label order (default: the ones the checkpoint records; without
    /// either, classes are named by number).
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// torchvision's transform_input (part of its googlenet / inception_v3 model, run on images and
    /// tensors alike), true or false. Default: what the checkpoint records; for a torchvision state_dict,
    /// which records nothing, true with a 1000-class head (torchvision turns it on for its ImageNet
    /// weights only) and false with any other (printed when assumed); false for every other model.
    #[arg(long, value_name = "BOOL")]
    transform_input: Option<bool>,
}

#[derive(clap::Args)]
struct SummaryArgs {
    /// The model (googlenet-d2l, googlenet-bn, inception-v2, inception-tf-cifar, inception-v3, googlenet, inception-v4, inception-resnet-v2).
    #[arg(long, default_value = "googlenet-d2l")]
    model: String,
    /// Input as NxCxHxW, e.g. 1x1x96x96.
    #[arg(long)]
    input: Option<String>,
    /// Also list every convolution with the algorithm the plan chose for it.
    #[arg(long)]
    algos: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The model (googlenet-d2l, googlenet-bn, inception-v2, inception-tf-cifar, inception-v3, googlenet, inception-v4, inception-resnet-v2).
    #[arg(long, default_value = "googlenet-d2l")]
    model: String,
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

fn load_data(args: &DataArgs, classes: usize) -> Result<(Dataset, Dataset)> {
    if let Some(paths) = &args.data_npy {
        let data = npy::read_pair(&paths[0], &paths[1], classes)?;
        return Ok((data.clone(), data));
    }
    if args.dataset == DatasetArg::Cifar10 {
        if args.data == Path::new(DEBIAN_FASHION_MNIST) {
            return Err(Error::config(
                "data",
                "--dataset cifar10 needs --data DIR, the directory with data_batch_1.bin ... test_batch.bin",
            ));
        }
        return cifar::read_dir(&args.data);
    }
    if !args.data.exists() {
        let hint = if args.data == Path::new(DEBIAN_FASHION_MNIST) {
            "install Fashion-MNIST with `sudo apt-get install -y dataset-fashion-mnist`, or pass --data DIR"
        } else {
            "pass --data DIR with the four IDX files (train-images-idx3-ubyte[.gz], ...)"
        };
        return Err(Error::file(args.data.display(), format!("no such directory: {hint}")));
    }
    idx::read_dir(&args.data)
}

/// The first `n` images of `data` (all without a limit); `flag` names the option for the error a limit of
/// 0 gets.
fn limit(data: Dataset, n: Option<usize>, flag: &str) -> Result<Dataset> {
    match n {
        Some(0) => Err(Error::config(
            flag,
            format!("{flag} must be at least 1 (omit it to use every image)"),
        )),
        Some(n) => Ok(data.truncate(n)),
        None => Ok(data),
    }
}

/// The model a command runs on weights: `--model`, or the one the checkpoint records (they must agree), else the
/// one whose state_dict the file holds.
fn resolve_model(flag: Option<String>, recorded: &Recorded, file: &TensorFile, checkpoint: &Path) -> Result<String> {
    resolve("model", flag, recorded.model.clone(), checkpoint, || {
        models::detect(file, checkpoint).map(str::to_string)
    })
}

/// The input size a command runs at: `--resize`, or the one the checkpoint records (they must agree),
/// else `native`.
fn resolve_size(
    resize: Option<usize>,
    recorded: &Recorded,
    checkpoint: &Path,
    native: [usize; 2],
) -> Result<InputSize> {
    let flag = match resize {
        Some(0) => return Err(Error::config("--resize", "--resize must be at least 1")),
        other => other.map(|s| InputSize([s, s])),
    };
    resolve("input size", flag, recorded.size.map(InputSize), checkpoint, || {
        Ok(InputSize(native))
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train_command(*args),
        Command::Models => models_command(),
        Command::Eval(args) => eval_command(args),
        Command::Predict(args) => predict_command(args),
        Command::Summary(args) => summary_command(args),
        Command::Bench(args) => bench_command(args),
    }
}

/// `incept train`: trains and writes the checkpoint and metrics.
fn train_command(args: TrainArgs) -> Result<()> {
    let TrainArgs {
        model,
        epochs,
        batch,
        lr,
        optimizer,
        momentum,
        nesterov,
        rmsprop_alpha,
        rmsprop_eps,
        rmsprop_centered,
        weight_decay,
        schedule,
        step_every,
        step_gamma,
        label_smoothing,
        augment,
        normalize,
        resize,
        seed,
        train_limit,
        test_limit,
        steps,
        no_shuffle,
        init,
        save,
        resume,
        out,
        overwrite,
        checkpoint_every,
        step_log,
        quiet,
        progress_every,
        conv_algo,
        gradient_groups,
        sync_bn,
        data,
        #[cfg(feature = "mpi")]
        collective_timeout,
    } = args;
    // Started by mpirun: this process is one rank of a data-parallel run.
    #[cfg(feature = "mpi")]
    let mpi_cluster = match incept::distributed::launched_by_mpi() {
        true => Some(
            incept::distributed::mpi::MpiCluster::init(std::time::Duration::from_secs(collective_timeout))
                .ok_or_else(|| incept::Error::config("mpi", "MPI was already initialized"))?,
        ),
        false => None,
    };
    #[cfg(feature = "mpi")]
    let cluster: &dyn Cluster = match &mpi_cluster {
        Some(c) => c,
        None => &SingleProcess,
    };
    // Without the feature, ranks started by mpirun would each train the whole run alone, all writing
    // the same files.
    #[cfg(not(feature = "mpi"))]
    if incept::distributed::launched_by_mpi() {
        return Err(incept::Error::config(
            "mpi",
            "this incept was started by an MPI launcher but built without the `mpi` feature, so its ranks \
             would each train alone: build it with `cargo build --release --features mpi`",
        ));
    }
    #[cfg(not(feature = "mpi"))]
    let cluster: &dyn Cluster = &SingleProcess;
    let lead = cluster.rank() == 0;
    // What can be refused before training is, on every rank; a rank that refuses must end the others,
    // which would otherwise wait for it at the first step's sums until the collective timeout.
    let prepared = (|| -> Result<(TrainConfig, Dataset, Dataset)> {
        // Every output is checked before the data is read, so a path that cannot be written loses nothing.
        if lead {
            check_dir("--out", &out)?;
            match &save {
                Some(path) => check_file("--save", path)?,
                None => check_file("--out", &out.join("checkpoint.safetensors"))?,
            }
            check_file("--out", &out.join("metrics.jsonl"))?;
            check_file("--out", &out.join("metrics.svg"))?;
            if let Some(path) = &step_log {
                check_file("--step-log", path)?;
            }
        }
        // A resumed run continues the recorded one: model and input size come from its checkpoint.
        let (recorded, checkpoint) = match &resume {
            Some(path) => (Recorded::read(path)?, path.clone()),
            None => (Recorded::default(), PathBuf::new()),
        };
        let model = resolve("model", model, recorded.model.clone(), &checkpoint, || {
            Ok("googlenet-d2l".to_string())
        })?;
        let mut config = models::default_config(&model)?;
        let (train_set, test_set) = load_data(&data, config.classes)?;
        let class_names = class_names(&data, config.classes)?;
        config.in_channels = train_set.shape[0];
        // Your own images train at their own size; a dataset at the model's native size.
        let native = if data.data_npy.is_some() {
            [train_set.shape[1], train_set.shape[2]]
        } else {
            config.size
        };
        let size = resolve_size(resize, &recorded, &checkpoint, native)?;
        config.size = size.0;
        let train_set = limit(train_set, train_limit, "--train-limit")?;
        let test_set = limit(test_set, test_limit, "--test-limit")?;
        let schedule = match schedule {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Step => Schedule::Step {
                every: step_every,
                gamma: step_gamma,
            },
            ScheduleArg::Cosine => Schedule::Cosine { epochs, min_lr: 0.0 },
        };
        let optimizer = match optimizer {
            OptimizerArg::Adam => OptimizerKind::Adam,
            OptimizerArg::Sgd => OptimizerKind::Sgd { momentum, nesterov },
            OptimizerArg::Rmsprop => OptimizerKind::RmsProp {
                alpha: rmsprop_alpha,
                eps: rmsprop_eps,
                momentum,
                centered: rmsprop_centered,
            },
        };
        let cfg = TrainConfig {
            model: model.clone(),
            config,
            epochs,
            batch,
            lr,
            schedule,
            optimizer,
            weight_decay,
            label_smoothing,
            augmentation: if augment {
                Augmentation::crop_and_flip()
            } else {
                Augmentation::default()
            },
            normalize,
            seed,
            shuffle: !no_shuffle,
            max_steps: steps,
            init,
            resume,
            save: Some(save.unwrap_or_else(|| out.join("checkpoint.safetensors"))),
            metrics: Some(out.join("metrics.jsonl")),
            step_log,
            progress: !quiet,
            progress_every: std::time::Duration::from_secs(progress_every),
            conv_algo: conv_algo.algo(),
            class_names,
            checkpoint_every: Some(checkpoint_every),
            gradient_groups: gradient_groups.map(|g| g as usize),
            sync_bn,
            stop: Some(stop_on_signal()?),
        };
        if cfg.resume.is_none() && lead {
            let checkpoint = cfg.save.as_deref().expect("set above");
            let metrics = cfg.metrics.as_deref().expect("set above");
            guard_previous_run(&[checkpoint, metrics], overwrite)?;
        }
        train::check_before_work(&cfg, train_set.len(), cluster)?;
        if lead {
            if batch > train_set.len() {
                println!(
                    "batch {batch} is more than the {} training images: each epoch is one batch of all of them \
                 (as PyTorch's DataLoader without drop_last)",
                    train_set.len()
                );
            }
            let ranks = match cluster.size() {
                1 => String::new(),
                n => format!(" on {n} ranks (each {} threads)", incept::parallel::threads()),
            };
            println!(
                "training {model} on {} images ({} test), {size}, batch {batch}, lr {lr}, {} epochs, {} threads{ranks}",
                train_set.len(),
                test_set.len(),
                epochs,
                incept::parallel::threads()
            );
        }
        Ok((cfg, train_set, test_set))
    })();
    let report = prepared.and_then(|(cfg, train_set, test_set)| {
        let report = train::train_across(&cfg, train_set, &test_set, |m| println!("{}", m.line()), cluster);
        report.map(|r| (r, cfg))
    });
    // A rank that fails (a checkpoint it cannot write, say) must not finalize MPI: that waits for the
    // other ranks, which wait in the next step's sums until the collective timeout. It ends them all.
    #[cfg(feature = "mpi")]
    if let (Err(e), Some(c)) = (&report, &mpi_cluster) {
        if c.size() > 1 {
            c.abort_all(&e.to_string());
        }
    }
    let (report, cfg) = report?;
    let ranks = cluster.size();
    // MPI is finalized (every rank together) before any early exit below.
    #[cfg(feature = "mpi")]
    drop(mpi_cluster);
    if !lead {
        // Rank 0 reports; a non-zero exit here would make mpirun stop it before it does.
        return Ok(());
    }
    let save_path = cfg.save.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    if report.interrupted {
        println!(
            "interrupted after step {}; checkpoint {save_path}; continue with:\n  {}",
            report.global_step,
            resume_command(&save_path, ranks)
        );
        std::process::exit(130);
    }
    println!(
        "{} steps; checkpoint {save_path}; metrics {}",
        report.global_step,
        out.join("metrics.jsonl").display()
    );
    if let Some(t) = report.step_times.filter(|t| t.steps > 0) {
        let per_step = |d: std::time::Duration| d.as_secs_f64() * 1e3 / t.steps as f64;
        let share = |d: std::time::Duration| 100.0 * d.as_secs_f64() / t.total().as_secs_f64().max(1e-9);
        println!(
            "rank 0, per step: {:.0} ms, of which gradients {:.0} ms, waiting for the other ranks {:.0} ms \
             ({:.1}%), gradient sum {:.0} ms ({:.1}%), update {:.0} ms",
            per_step(t.total()),
            per_step(t.gradients),
            per_step(t.waiting),
            share(t.waiting),
            per_step(t.gradient_sum),
            share(t.gradient_sum),
            per_step(t.update)
        );
    }
    Ok(())
}

/// `incept eval`: test loss and accuracy of saved weights.
fn eval_command(args: EvalArgs) -> Result<()> {
    let EvalArgs {
        model,
        weights,
        resize,
        batch,
        test_limit,
        data,
    } = args;
    // One read of the weights: channels, classes, parameters and normalization all come from it.
    let file = TensorFile::read(&weights)?;
    let recorded = file.recorded(&weights)?;
    let model = resolve_model(model, &recorded, &file, &weights)?;
    let mut config = models::config_from_weights(&model, &file)?;
    config.size = resolve_size(resize, &recorded, &weights, config.size)?.0;
    if batch == 0 {
        return Err(Error::config("--batch", "--batch must be at least 1"));
    }
    let graph = models::build(&model, config)?;
    let (_, test_set) = load_data(&data, graph.output_len())?;
    let test_set = limit(test_set, test_limit, "--test-limit")?;
    // Planned for the batch that occurs: a batch beyond the test set is all of it.
    let capacity = batch.min(test_set.len()).max(1);
    // Checked with the parameters loaded, as Executor::new checks.
    let params = file.params_for(&graph, &weights)?;
    let [_, h, w] = graph.input_shape();
    Executor::check_memory(
        &graph,
        Default::default(),
        capacity,
        false,
        &format!("batch {batch} at {h}x{w}"),
        |k| match k {
            Some(k) => format!("try --batch {k}"),
            None => "try a smaller --resize".to_string(),
        },
    )?;
    let mut exec = Executor::new(Model { graph, params }, capacity)?;
    let normalization = file.normalization(&weights)?;
    let (loss, acc) = train::evaluate(&mut exec, &test_set, batch, normalization.as_ref())?;
    println!("test loss {loss:.4}, test acc {acc:.4} ({} images)", test_set.len());
    Ok(())
}

/// `incept predict`: eval-mode logits of a .npy batch.
fn predict_command(args: PredictArgs) -> Result<()> {
    let PredictArgs {
        model,
        weights,
        images,
        input,
        output,
        top_k,
        json,
        classes,
        transform_input,
        normalize_input,
    } = args;
    if top_k == 0 {
        return Err(Error::config("top-k", "--top-k must be at least 1"));
    }
    if let Some(path) = &output {
        check_file("--output", path)?;
    }
    // The .npy images' own size, for weights that record none.
    let x = input.as_deref().map(npy::read_images).transpose()?;
    let size = x.as_ref().map(|x| [x.shape()[2], x.shape()[3]]);
    let mut classifier = Classifier::at_size(model.as_deref(), &weights, size).map_err(|e| match (&input, e) {
        (Some(input), Error::Config { reason, .. }) if reason.contains("resize them first") => {
            Error::file(input.display(), reason)
        }
        (_, e) => e,
    })?;
    match transform_input {
        Some(on) => classifier.set_transform_input(on)?,
        None => {
            if let Some(assumed) = classifier.transform_input_assumption() {
                let other = !classifier.transform_input();
                eprintln!("{assumed}; --transform-input {other} to change it");
            }
        }
    }
    if let Some(path) = &classes {
        let names = data::read_class_names(path)?;
        let (found, classes) = (names.len(), classifier.class_names().len());
        classifier.set_class_names(names).map_err(|_| {
            Error::config(
                "classes",
                format!("{} names {found} classes, the model has {classes}", path.display()),
            )
        })?;
    }
    let (names, logits) = match (&input, x) {
        (Some(input), Some(x)) => {
            let [c, ..] = classifier.input_shape();
            if x.shape()[1] != c {
                return Err(Error::file(
                    input.display(),
                    format!(
                        "images with {c} channel(s), as the weights expect, found {}",
                        x.shape()[1]
                    ),
                ));
            }
            let names: Vec<String> = (0..x.shape()[0]).map(|i| format!("{}[{i}]", input.display())).collect();
            let logits = if normalize_input {
                eprintln!(
                    "preprocessing of {} (--normalize-input): {}; {}",
                    input.display(),
                    classifier.preprocessing(),
                    classifier.network_input_step()
                );
                classifier.forward_images(x.view())?
            } else {
                eprintln!(
                    "preprocessing of {}: none, the tensor goes to the network as given; {}",
                    input.display(),
                    classifier.network_input_step()
                );
                classifier.forward_tensor(x.view())?
            };
            (names, logits)
        }
        _ => {
            if images.is_empty() {
                return Err(Error::config(
                    "predict",
                    "give image files or directories to classify, or --input X.npy --output Y.npy",
                ));
            }
            let files = images::image_files(&images)?;
            let x = classifier.read_images(&files)?;
            eprintln!(
                "preprocessing of the images: {}, values in [0, 1], {}; {}",
                classifier.image_recipe(),
                classifier.preprocessing(),
                classifier.network_input_step()
            );
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            (names, classifier.forward_images(x.view())?)
        }
    };
    if let Some(output) = &output {
        npy::write_matrix(output, &logits)?;
        if input.is_some() {
            println!(
                "wrote {} x {} logits to {}",
                logits.nrows(),
                logits.ncols(),
                output.display()
            );
            return Ok(());
        }
    }
    for (name, top) in names.iter().zip(classifier.top(&logits, top_k)) {
        if json {
            let top: Vec<serde_json::Value> = top
                .iter()
                .map(|p| serde_json::json!({"class": p.class, "index": p.index, "probability": p.probability}))
                .collect();
            println!("{}", serde_json::json!({"file": name, "top": top}));
        } else {
            println!("{name}");
            for p in &top {
                println!("  {:>6.2}%  {}", 100.0 * p.probability, p.class);
            }
        }
    }
    Ok(())
}

/// `incept models`: the model table.
fn models_command() -> Result<()> {
    println!(
        "{:<20} {:>11} {:>7} {:>11} {:>11}  weights that load (besides incept checkpoints)",
        "model", "input", "classes", "parameters", "GFLOP/img"
    );
    for m in models::MODELS {
        let config = models::default_config(m.name)?;
        let graph = models::build(m.name, config)?;
        println!(
            "{:<20} {:>11} {:>7} {:>11} {:>11.3}  {}",
            m.name,
            format!("{}x{}x{}", config.in_channels, config.size[0], config.size[1]),
            config.classes,
            graph.parameter_count(),
            graph.flops_per_image() as f64 / 1e9,
            m.weight_names
        );
    }
    Ok(())
}

/// `incept summary`: shape trace, parameters, FLOPs and the plan's algorithms.
fn summary_command(args: SummaryArgs) -> Result<()> {
    let SummaryArgs { model, input, algos } = args;
    let mut config = models::default_config(&model)?;
    let mut batch = 1;
    if let Some(spec) = input {
        let dims: Vec<usize> = spec
            .split('x')
            .map(|d| d.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::config("summary", format!("--input must look like 1x1x96x96, found {spec:?}")))?;
        let [n, c, h, w] = dims[..] else {
            return Err(Error::config(
                "summary",
                format!("--input needs 4 sizes NxCxHxW, found {spec:?}"),
            ));
        };
        batch = n.max(1);
        config.in_channels = c;
        config.size = [h, w];
    }
    let graph = models::build(&model, config)?;
    for line in models::shape_trace(&graph) {
        println!("{line}");
    }
    println!("parameters: {}", graph.parameter_count());
    println!("GFLOP per image (forward): {:.4}", graph.flops_per_image() as f64 / 1e9);
    if algos {
        let plan = Plan::for_capacity(&graph, PlanOptions::default(), batch)?;
        let total = graph.flops_per_image() as f64;
        println!(
            "{:<14} {:<26} {:>9} {:<13} {:<13} {:<15} {:>6}",
            "conv", "op", "output", "inference", "training", "layout in->out", "FLOPs"
        );
        for (id, (node, algo)) in graph.nodes.iter().zip(&plan.conv_algos).enumerate() {
            let Some(algo) = algo else { continue };
            let [_, h, w] = node.shape;
            let layouts = format!("{:?}->{:?}", plan.layouts[node.inputs[0]], plan.layouts[id]);
            let algorithm = |training| match plan.winograd_tile(id, training) {
                Some(tile) => format!("{algo:?}+F({tile},3)"),
                None => format!("{algo:?}"),
            };
            println!(
                "{:<14} {:<26} {:>9} {:<13} {:<13} {:<15} {:>5.1}%",
                node.name,
                node.layer.describe(),
                format!("{h}x{w}"),
                algorithm(false),
                algorithm(true),
                layouts,
                100.0 * graph.node_flops(node) as f64 / total
            );
        }
        let blocked = plan.layouts.iter().filter(|&&l| l == Layout::Blocked).count();
        println!(
            "{blocked} of {} nodes keep their output in the blocked layout; the microkernel runs on {:?}",
            graph.nodes.len(),
            plan.options.isa
        );
        if plan
            .winograd_tiles
            .iter()
            .chain(&plan.winograd_training_tiles)
            .any(Option::is_some)
        {
            println!(
                "Direct+F(m,3): at batch {batch}, Winograd F(m×m, 3×3) on the microkernel (in training: forward, input and weight gradients)"
            );
        }
    }
    Ok(())
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
}

/// `incept bench`: time per batch, and where it goes with `--profile`.
fn bench_command(args: BenchArgs) -> Result<()> {
    let BenchArgs {
        model,
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
    } = args;
    let (warmup, steps) = match protocol {
        Protocol::Median => (warmup, steps),
        Protocol::Chapter => (10, 100),
    };
    let graph = models::build(&model, models::default_config(&model)?)?;
    let m = Model::init(graph.clone(), 0);
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
    };
    let r = bench::bench(m, options)?;
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
        };
        println!("{}", serde_json::to_string(&record).expect("plain values"));
    } else {
        println!(
            "{model} {mode} batch {batch}, {threads} threads, microkernel on {:?}, element-wise kernels on {}: {:.1} ms per batch (median of {steps}), {:.1} img/s",
            r.isa,
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
