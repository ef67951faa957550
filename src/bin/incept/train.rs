//! `incept train`: its flags, the run's outputs checked before any work, Ctrl-C handling, and the
//! training run (one process, or one rank under mpirun).

use std::path::{Path, PathBuf};

use crate::args::{ConvAlgoArg, DataArgs, PrecisionArg, class_names, limit, load_data, resolve_size};
use clap::ValueEnum;
use incept::data::Dataset;
use incept::data::augment::Augmentation;
use incept::distributed::{Cluster, SingleProcess};
use incept::io::checkpoint::{InputSize, Recorded, resolve};
use incept::io::output::{check_dir, check_file};
use incept::models;
use incept::optim::Schedule;
use incept::train::{self, CheckpointEvery, OptimizerKind, TrainConfig};
use incept::{Error, Result};

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

#[derive(clap::Args)]
pub(crate) struct TrainArgs {
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
    /// The arithmetic of the convolutions: f32, or bf16 mixed precision (bf16 products summed in
    /// float32; float32 master weights, optimizer, batch norm and loss; no Winograd).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
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
pub(crate) fn resume_command(checkpoint: &str, ranks: usize) -> String {
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

/// `incept train`: trains and writes the checkpoint and metrics.
pub(crate) fn train_command(args: TrainArgs) -> Result<()> {
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
        precision,
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
        // An ONNX file to start from brings its own graph, trained as it is (the run records model `onnx`
        // and the file, which a resumed run must be given again).
        if recorded.model.as_deref() == Some("onnx") && init.is_none() {
            let source = incept::io::checkpoint::TensorFile::read_metadata(&checkpoint)?
                .get("onnx_graph")
                .cloned()
                .unwrap_or_else(|| "the ONNX file".into());
            return Err(Error::config(
                "--resume",
                format!(
                    "{} continues a run on the graph imported from {source}; add --init {source}",
                    checkpoint.display()
                ),
            ));
        }
        let imported = match init.as_deref().filter(|p| incept::onnx::is_onnx(p)) {
            Some(path) => {
                if let Some(m) = &model {
                    return Err(Error::config(
                        "--model",
                        format!(
                            "--init {} is an ONNX model with a graph of its own, not {m}; drop --model",
                            path.display()
                        ),
                    ));
                }
                if lead {
                    check_file("--out", &out.join("model.onnx"))?;
                }
                Some(incept::onnx::read(path, resize.map(|s| [s, s]))?)
            }
            None => None,
        };
        let model = match &imported {
            Some(_) => "onnx".to_string(),
            None => resolve("model", model, recorded.model.clone(), &checkpoint, || {
                Ok("googlenet-d2l".to_string())
            })?,
        };
        if recorded.model.as_deref().is_some_and(|r| r != model) {
            return Err(Error::config(
                "--resume",
                format!(
                    "{} continues a run of {}, this one trains {model}",
                    checkpoint.display(),
                    recorded.model.as_deref().unwrap_or("")
                ),
            ));
        }
        let mut config = match &imported {
            Some(i) => {
                let [c, h, w] = i.graph.input_shape();
                incept::models::ModelConfig {
                    in_channels: c,
                    size: [h, w],
                    classes: i.graph.output_len(),
                    aux_heads: false,
                }
            }
            None => models::default_config(&model)?,
        };
        let (train_set, test_set) = load_data(&data, config.classes)?;
        let class_names = class_names(&data, config.classes)?;
        config.in_channels = train_set.shape[0];
        // Your own images train at their own size; a dataset at the model's native size.
        let native = if data.data_npy.is_some() {
            [train_set.shape[1], train_set.shape[2]]
        } else {
            config.size
        };
        let size = match &imported {
            Some(_) => InputSize(config.size),
            None => resolve_size(resize, &recorded, &checkpoint, native)?,
        };
        if imported.is_some() && train_set.shape[0] != config.in_channels {
            return Err(Error::config(
                "--init",
                format!(
                    "the ONNX graph takes {} channel(s), the training images have {}",
                    config.in_channels, train_set.shape[0]
                ),
            ));
        }
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
            graph: imported.map(|i| i.graph),
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
            precision: precision.precision("training")?,
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
            // float32 says nothing, as before bf16 existed.
            let arithmetic = match cfg.precision {
                incept::graph::Precision::F32 => String::new(),
                incept::graph::Precision::Bf16 => format!(
                    ", bf16 mixed precision ({})",
                    incept::microkernel::Bf16Isa::best().name()
                ),
            };
            println!(
                "training {model} on {} images ({} test), {size}, batch {batch}, lr {lr}, {} epochs, {} threads{ranks}{arithmetic}",
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
    if let Some(graph) = &cfg.graph {
        // An imported graph goes back out as ONNX: the zoo cannot rebuild it from the checkpoint.
        let path = out.join("model.onnx");
        let save = cfg.save.as_deref().expect("every run saves");
        let file = incept::io::checkpoint::TensorFile::read(save)?;
        let params = file.params_for(graph, save)?;
        let metadata = file.metadata.into_iter().filter(|(k, _)| k != "format").collect();
        incept::onnx::write(&path, graph, &params, &metadata, incept::onnx::DEFAULT_OPSET)?;
        println!("the fine-tuned graph as ONNX: {}", path.display());
    }
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
