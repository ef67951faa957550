//! Training and evaluation of a model on in-memory datasets: the engine behind `incept train` and
//! `eval`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::progress::{Progress, Status};

use crate::data::Dataset;
use crate::data::augment::Augmentation;
use crate::data::loader::{Loader, Prep, epoch_order};
use crate::data::transforms::{Normalization, resize_bilinear};
use crate::distributed::{Cluster, SingleProcess};
use crate::error::{Error, Result};
use crate::graph::{Executor, Mode};
use crate::io::checkpoint::{TensorFile, save};
use crate::models::{Model, ModelConfig};
use crate::optim::{Adam, Optimizer, RmsProp, Schedule, Sgd};
use crate::reduction::Sharding;
use crate::tensor::Images;

mod checks;
mod data_parallel;

pub use checks::{check_before_work, check_memory};
use checks::{check_data, check_resume};
use data_parallel::{FlatGrads, Shard, step_across};

/// Which optimizer to build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// Adam with PyTorch's defaults and the given weight decay.
    Adam,
    /// SGD.
    Sgd {
        /// Momentum factor.
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// RMSProp as PyTorch's, with the given weight decay.
    RmsProp {
        /// Decay of the squared-gradient average.
        alpha: f32,
        /// Added to the denominator.
        eps: f32,
        /// Momentum factor.
        momentum: f32,
        /// Normalize by the variance.
        centered: bool,
    },
}

/// Everything a training run needs besides the data.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Model name (see [`crate::models::MODELS`]); `onnx` for a graph imported from an ONNX file.
    pub model: String,
    /// The graph, when it is not the zoo's `model` at `config`: one imported from an ONNX file
    /// (`train --init model.onnx`), whose configuration `config` must describe.
    pub graph: Option<crate::graph::Graph>,
    /// Model configuration (input channels, size, classes).
    pub config: ModelConfig,
    /// Epochs to run.
    pub epochs: usize,
    /// Images per batch.
    pub batch: usize,
    /// Base learning rate.
    pub lr: f32,
    /// Schedule applied to `lr` per epoch.
    pub schedule: Schedule,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Label smoothing of the loss.
    pub label_smoothing: f32,
    /// Training-image augmentation (none by default).
    pub augmentation: Augmentation,
    /// Normalize every image per channel with the training set's mean and standard deviation.
    pub normalize: bool,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
    /// Shuffle the training set each epoch.
    pub shuffle: bool,
    /// Stop after this many steps in total (counting steps before a resume).
    pub max_steps: Option<u64>,
    /// Initial weights (PyTorch names) instead of a seeded initialisation.
    pub init: Option<PathBuf>,
    /// Checkpoint to continue from.
    pub resume: Option<PathBuf>,
    /// Where to write the checkpoint after each epoch and at the end.
    pub save: Option<PathBuf>,
    /// JSON-lines metrics file (one line per epoch), with an SVG of the curves beside it.
    pub metrics: Option<PathBuf>,
    /// JSON-lines file with one line per training step (`step`, `loss`, `correct`, `images`).
    pub step_log: Option<PathBuf>,
    /// Show progress: a bar on a terminal, else a plain line every `progress_every` ([`crate::progress`]).
    pub progress: bool,
    /// How often progress lines are printed when stdout is not a terminal.
    pub progress_every: std::time::Duration,
    /// Convolution algorithm forced on every layer (`Auto`: the plan's choice per layer). `Naive`
    /// accumulates in float64: slow, but its rounding is far below float32's, for checking gradients.
    pub conv_algo: crate::ops::conv::ConvAlgo,
    /// The arithmetic of the convolutions ([`crate::graph::Precision`]): float32, or bf16 products
    /// summed in float32 with float32 master weights (mixed precision).
    pub precision: crate::graph::Precision,
    /// The name of each class, in label order, recorded in checkpoints for `incept predict` (empty:
    /// unknown; predictions then name classes by number).
    pub class_names: Vec<String>,
    /// Also write the checkpoint in the middle of an epoch, this often (besides after every epoch).
    pub checkpoint_every: Option<CheckpointEvery>,
    /// Gradient groups per batch ([`crate::reduction`]); `None`: one per rank. The weights depend on
    /// the groups and not on the ranks: one process with N groups trains as N ranks do.
    pub gradient_groups: Option<usize>,
    /// Batch norms take their training statistics over the global batch of every rank (PyTorch's
    /// `SyncBatchNorm`) instead of each rank's own images.
    pub sync_bn: bool,
    /// Set (by a signal handler) to stop: the step under way finishes, the checkpoint is written, and
    /// `train` returns with [`TrainReport::interrupted`].
    pub stop: Option<Arc<AtomicBool>>,
}

/// How often a run writes its checkpoint in the middle of an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckpointEvery {
    /// After every this many steps.
    Steps(u64),
    /// When this much wall time has passed since the last checkpoint.
    Time(std::time::Duration),
}

impl TrainConfig {
    /// The graph this run trains: the imported one, or the zoo's `model` at `config`.
    pub fn build_graph(&self) -> Result<crate::graph::Graph> {
        match &self.graph {
            Some(graph) => Ok(graph.clone()),
            None => crate::models::build(&self.model, self.config),
        }
    }
}

impl Default for TrainConfig {
    /// The chapter's recipe: googlenet-d2l at 96×96, 5 epochs, batch 128, Adam with learning rate 1e-3,
    /// shuffled, seed 0; nothing written, no progress bar.
    fn default() -> Self {
        TrainConfig {
            model: "googlenet-d2l".into(),
            config: crate::models::default_config("googlenet-d2l").expect("googlenet-d2l is in the model table"),
            epochs: 5,
            batch: 128,
            lr: 1e-3,
            schedule: Schedule::Constant,
            optimizer: OptimizerKind::Adam,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            augmentation: Augmentation::default(),
            normalize: false,
            seed: 0,
            shuffle: true,
            max_steps: None,
            init: None,
            graph: None,
            resume: None,
            save: None,
            metrics: None,
            step_log: None,
            progress: false,
            progress_every: std::time::Duration::from_secs(10),
            conv_algo: crate::ops::conv::ConvAlgo::Auto,
            precision: crate::graph::Precision::F32,
            class_names: Vec::new(),
            checkpoint_every: None,
            gradient_groups: None,
            sync_bn: false,
            stop: None,
        }
    }
}

/// One epoch's figures, as one line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (weighted by batch size).
    pub train_loss: f64,
    /// Training accuracy.
    pub train_acc: f64,
    /// Test loss (None when the run stopped mid-epoch).
    pub test_loss: Option<f64>,
    /// Test accuracy.
    pub test_acc: Option<f64>,
    /// Wall time of the epoch's training steps and test pass, seconds.
    pub seconds: f64,
    /// Training images per second.
    #[serde(rename = "img_per_s")]
    pub images_per_second: f64,
}

/// One line of the `--step-log` file.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    /// 1-based step of the whole run.
    pub step: u64,
    /// The batch's mean loss.
    pub loss: f64,
    /// Images of the batch classified right.
    pub correct: usize,
    /// Images in the batch.
    pub images: usize,
}

impl EpochMetrics {
    /// The chapter's line: `epoch 1, loss 1.1130, train acc 0.570, test acc 0.831, time 45.5 sec`.
    pub fn line(&self) -> String {
        let test = self
            .test_acc
            .map_or("test acc -".to_string(), |a| format!("test acc {a:.3}"));
        format!(
            "epoch {}, loss {:.4}, train acc {:.3}, {test}, time {:.1} sec",
            self.epoch, self.train_loss, self.train_acc, self.seconds
        )
    }

    fn json(&self) -> String {
        serde_json::to_string(self).expect("metrics are plain numbers")
    }
}

/// Position and running sums of a run, saved in checkpoints so `--resume` continues exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Position {
    epoch: usize,
    batch: usize,
    global_step: u64,
    loss_sum: f64,
    correct: usize,
    seen: usize,
    seconds: f64,
}

/// What a finished (or stopped) run returns.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The trained model.
    pub model: Model,
    /// One entry per completed epoch (and one for a partial epoch stopped by `max_steps`).
    pub epochs: Vec<EpochMetrics>,
    /// Steps taken in total.
    pub global_step: u64,
    /// Whether [`TrainConfig::stop`] ended the run early (after writing its checkpoint).
    pub interrupted: bool,
    /// Where a data-parallel run's steps went on this rank (`None` in one process).
    pub step_times: Option<StepTimes>,
}

/// Where the data-parallel steps of a run went on one rank, summed over its steps.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepTimes {
    /// Steps timed.
    pub steps: u64,
    /// Forward, loss and backward on this rank's shard.
    pub gradients: Duration,
    /// The sum of the step's loss and stop requests: mostly waiting for the slowest rank to finish
    /// its gradients.
    pub waiting: Duration,
    /// The gradients' sum across ranks, their copies in and out of one buffer included.
    pub gradient_sum: Duration,
    /// The optimizer's update.
    pub update: Duration,
}

impl StepTimes {
    /// The whole of the steps.
    pub fn total(&self) -> Duration {
        self.gradients + self.waiting + self.gradient_sum + self.update
    }
}

fn build_optimizer(cfg: &TrainConfig, lens: &[usize]) -> Optimizer {
    match cfg.optimizer {
        OptimizerKind::Adam => {
            let mut adam = Adam::new(lens);
            adam.weight_decay = cfg.weight_decay;
            Optimizer::Adam(adam)
        }
        OptimizerKind::Sgd { momentum, nesterov } => {
            Optimizer::Sgd(Sgd::new(lens, momentum, nesterov, cfg.weight_decay))
        }
        OptimizerKind::RmsProp {
            alpha,
            eps,
            momentum,
            centered,
        } => Optimizer::RmsProp(RmsProp::new(lens, alpha, eps, momentum, centered, cfg.weight_decay)),
    }
}

fn metadata(cfg: &TrainConfig, opt: &Optimizer, pos: &Position) -> HashMap<String, String> {
    [
        ("optimizer", opt.name().to_string()),
        ("optimizer_steps", opt.steps().to_string()),
        ("seed", cfg.seed.to_string()),
        ("batch", cfg.batch.to_string()),
        ("shuffle", cfg.shuffle.to_string()),
        ("epoch", pos.epoch.to_string()),
        ("batch_in_epoch", pos.batch.to_string()),
        ("global_step", pos.global_step.to_string()),
        // Running sums of the unfinished epoch, in exact (hex) form.
        ("loss_sum", format!("{:x}", pos.loss_sum.to_bits())),
        ("correct", pos.correct.to_string()),
        ("seen", pos.seen.to_string()),
        ("seconds", format!("{:x}", pos.seconds.to_bits())),
        // What the convolutions computed in; the weights are float32 either way.
        ("precision", cfg.precision.name().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(crate::io::checkpoint::model_metadata(&cfg.model, &cfg.config))
    .chain((!cfg.class_names.is_empty()).then(|| {
        let names = serde_json::to_string(&cfg.class_names).expect("strings serialize");
        ("class_names".to_string(), names)
    }))
    // An imported graph is rebuilt from its file when the run is resumed.
    .chain(
        cfg.graph
            .as_ref()
            .and(cfg.init.as_ref())
            .map(|init| ("onnx_graph".to_string(), init.display().to_string())),
    )
    .collect()
}

fn restore(cfg: &TrainConfig, model: &mut Model, opt: &mut Optimizer, path: &Path) -> Result<Position> {
    let file = TensorFile::read(path)?;
    check_resume(cfg, &file.metadata, path)?;
    model.params = file.params_for(&model.graph, path)?;
    let slots: Vec<&str> = opt.slots().iter().map(|s| s.0).collect();
    let state = file.optimizer_slots(&model.graph, &slots, path)?;
    opt.restore(file.meta("optimizer_steps", path)?, state)?;
    let bits = |key: &str| -> Result<f64> {
        let hex: String = file.meta(key, path)?;
        u64::from_str_radix(&hex, 16)
            .map(f64::from_bits)
            .map_err(|_| Error::file(path.display(), format!("metadata {key}: bad value {hex:?}")))
    };
    Ok(Position {
        epoch: file.meta("epoch", path)?,
        batch: file.meta("batch_in_epoch", path)?,
        global_step: file.meta("global_step", path)?,
        loss_sum: bits("loss_sum")?,
        correct: file.meta("correct", path)?,
        seen: file.meta("seen", path)?,
        seconds: bits("seconds")?,
    })
}

/// Trains `cfg.model` on `train`, evaluating on `test` after each epoch. `report` receives each
/// epoch's metrics as soon as they are known.
pub fn train(
    cfg: &TrainConfig,
    train: Dataset,
    test: &Dataset,
    report: impl FnMut(&EpochMetrics),
) -> Result<TrainReport> {
    train_across(cfg, train, test, report, &SingleProcess)
}

/// [`train`] as one rank of a data-parallel run over `cluster`: each global batch of `cfg.batch`
/// images is split across the ranks ([`Sharding::shard`]; this rank reads only its own), the
/// gradients are summed across them once per step, and every rank applies the same optimizer step.
/// Rank 0 alone shows progress, evaluates, reports and writes the checkpoint, metrics and step log;
/// every rank can resume from that checkpoint. Batch
/// norm statistics stay per rank, as PyTorch's DistributedDataParallel keeps them: training uses each
/// rank's batch statistics, and rank 0's running statistics are the ones evaluated and saved. With
/// [`SingleProcess`] this is [`train`], bit for bit.
pub fn train_across(
    cfg: &TrainConfig,
    train: Dataset,
    test: &Dataset,
    mut report: impl FnMut(&EpochMetrics),
    cluster: &dyn Cluster,
) -> Result<TrainReport> {
    let (rank, ranks) = (cluster.rank(), cluster.size());
    let lead = rank == 0;
    check_before_work(cfg, train.len(), cluster)?;
    let groups = cfg.gradient_groups.unwrap_or(ranks);
    if groups < ranks {
        return Err(Error::config(
            "train",
            format!("--gradient-groups {groups} is fewer than the {ranks} ranks: each rank needs a group at least"),
        ));
    }
    let sharding = Sharding { rank, ranks, groups };
    // A synchronized batch norm waits for every rank, so every rank needs an image of every batch.
    let last_batch = train.len() % cfg.batch;
    if cfg.sync_bn && ranks > 1 && (cfg.batch < ranks || (last_batch > 0 && last_batch < ranks)) {
        return Err(Error::config(
            "train",
            format!(
                "--sync-bn needs at least one image per rank in every batch: {ranks} ranks, batch {}, \
                 the last batch of an epoch {} images (change --batch or --train-limit)",
                cfg.batch,
                if last_batch > 0 { last_batch } else { cfg.batch }
            ),
        ));
    }
    check_data("training data", &train, cfg.config)?;
    check_data("test data", test, cfg.config)?;
    let graph = cfg.build_graph()?;
    // A batch larger than the training set is one short batch per epoch (as PyTorch's DataLoader
    // without drop_last): the buffers are planned for the images a batch can hold.
    let capacity = cfg.batch.min(train.len());
    let mut model = Model::init(graph, cfg.seed);
    if let Some(init) = &cfg.init {
        // Weights saved for inference lack the auxiliary heads training needs: those start fresh.
        let optional = crate::models::entry(&cfg.model).map_or(&[][..], |e| e.aux_prefixes);
        let fresh = std::mem::take(&mut model.params);
        let file = match crate::onnx::is_onnx(init) {
            true => crate::onnx::read(init, Some(cfg.config.size))?.tensor_file(),
            false => TensorFile::read(init)?,
        };
        let (params, kept_fresh) = file.params_or_fresh(&model.graph, init, optional, fresh)?;
        model.params = params;
        if !kept_fresh.is_empty() {
            println!(
                "{} has no auxiliary heads ({}); they start from a fresh initialization",
                init.display(),
                kept_fresh
                    .iter()
                    .map(|p| format!("{p}*"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let lens: Vec<usize> = model.graph.params.iter().map(|p| p.len()).collect();
    let mut opt = build_optimizer(cfg, &lens);
    let mut pos = Position::default();
    if let Some(resume) = &cfg.resume {
        pos = restore(cfg, &mut model, &mut opt, resume)?;
    }
    // The last checkpoint on disk and the step it holds: what a run stopped by a NaN loss leaves.
    let mut kept: Option<(PathBuf, u64)> = cfg.resume.clone().map(|p| (p, pos.global_step));
    let mut exec = Executor::new(model, capacity)?;
    exec.set_plan_options(crate::graph::PlanOptions {
        conv_algo: cfg.conv_algo,
        precision: cfg.precision,
        ..exec.plan().options
    })?;
    exec.set_label_smoothing(cfg.label_smoothing)?;
    exec.set_gradient_groups(groups)?;
    exec.set_sync_batch_norm(cfg.sync_bn);
    let normalization = cfg.normalize.then(|| Normalization::of_dataset(&train));
    let train = Arc::new(train);
    let size = cfg.config.size;
    let image_len = cfg.config.in_channels * size[0] * size[1];
    let batches_per_epoch = train.len().div_ceil(cfg.batch);
    let mut epochs = Vec::new();
    let metadata_for = |opt: &Optimizer, pos: &Position| {
        let mut m = metadata(cfg, opt, pos);
        if let Some(n) = &normalization {
            m.insert("normalization".into(), n.to_metadata());
        }
        m
    };
    let save_now = |model: &Model, opt: &Optimizer, pos: &Position| -> Result<()> {
        match &cfg.save {
            Some(path) if lead => save(path, &model.graph, &model.params, Some(opt), &metadata_for(opt, pos)),
            _ => Ok(()),
        }
    };
    // Data-parallel: this rank's gradients as one buffer, and their sum over the ranks (one collective
    // per step).
    let flat_len = if ranks > 1 { lens.iter().sum() } else { 0 };
    let mut flat_grads = FlatGrads {
        local: vec![0f32; flat_len],
        summed: vec![0f32; flat_len],
        times: StepTimes::default(),
    };
    let steps_left = |pos: &Position| cfg.max_steps.is_none_or(|m| pos.global_step < m);
    let mut interrupted = false;
    let mut last_checkpoint = Instant::now();
    let total_steps = {
        let planned = (cfg.epochs * batches_per_epoch) as u64;
        cfg.max_steps.map_or(planned, |m| m.min(planned))
    };
    let mut progress = Progress::new(
        cfg.progress && lead,
        cfg.progress_every,
        cfg.epochs,
        batches_per_epoch,
        total_steps,
        pos.global_step,
    );
    while pos.epoch < cfg.epochs && steps_left(&pos) && !interrupted {
        let lr = cfg.schedule.lr(cfg.lr, pos.epoch);
        let order = epoch_order(train.len(), cfg.shuffle, cfg.seed, pos.epoch);
        progress.start_epoch(pos.epoch, pos.batch);
        let started = Instant::now();
        let seconds_before = pos.seconds;
        let mut stopped = false;
        let prep = Prep {
            size,
            augment: cfg.augmentation,
            normalization: normalization.clone(),
            seed: cfg.seed,
            epoch: pos.epoch,
        };
        for batch in Loader::sharded(train.clone(), order, cfg.batch, pos.batch, prep, sharding) {
            let batch = batch?;
            let images = Images::dense(&batch.images, batch.labels.len(), image_len);
            // Read after the step's work, so a stop asked for during the step ends the run after it.
            let asked_to_stop = || cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
            let (loss, n, stop_requested) = if ranks == 1 {
                let loss = exec.train_step(images, &batch.labels, &mut opt, lr)?;
                (loss, batch.labels.len(), asked_to_stop())
            } else {
                let global = cfg.batch.min(train.len() - batch.index * cfg.batch);
                let step = pos.global_step + 1;
                let shard = Shard {
                    images,
                    labels: &batch.labels,
                    of: sharding.shard(global),
                };
                step_across(
                    &mut exec,
                    cluster,
                    shard,
                    &mut flat_grads,
                    &mut opt,
                    lr,
                    asked_to_stop,
                    step,
                )?
            };
            if !loss.loss.is_finite() {
                progress.abandon();
                return Err(Error::NonFiniteLoss {
                    step: pos.global_step + 1,
                    loss: loss.loss as f32,
                    kept: match &kept {
                        Some((path, step)) => {
                            format!("the last good checkpoint, after step {step}, is {}", path.display())
                        }
                        None => "no checkpoint was written before it".to_string(),
                    },
                });
            }
            pos.global_step += 1;
            if let Some(path) = cfg.step_log.as_ref().filter(|_| lead) {
                let record = StepRecord {
                    step: pos.global_step,
                    loss: loss.loss,
                    correct: loss.correct,
                    images: n,
                };
                append_line(path, &serde_json::to_string(&record).expect("plain numbers"))?;
            }
            pos.batch = batch.index + 1;
            pos.loss_sum += loss.loss * n as f64;
            pos.correct += loss.correct;
            pos.seen += n;
            pos.seconds = seconds_before + started.elapsed().as_secs_f64();
            progress.step(&Status {
                global_step: pos.global_step,
                epoch: pos.epoch,
                batch: pos.batch,
                loss: pos.loss_sum / pos.seen as f64,
                accuracy: pos.correct as f64 / pos.seen as f64,
                images_per_second: pos.seen as f64 / pos.seconds.max(1e-9),
            });
            if !steps_left(&pos) {
                stopped = pos.batch < batches_per_epoch;
                break;
            }
            if stop_requested {
                interrupted = true;
                stopped = pos.batch < batches_per_epoch;
                break;
            }
            let due = match cfg.checkpoint_every {
                Some(CheckpointEvery::Steps(n)) => pos.global_step % n.max(1) == 0,
                Some(CheckpointEvery::Time(every)) => last_checkpoint.elapsed() >= every,
                None => false,
            };
            if due && pos.batch < batches_per_epoch {
                save_now(exec.model(), &opt, &pos)?;
                last_checkpoint = Instant::now();
                if let Some(path) = &cfg.save {
                    kept = Some((path.clone(), pos.global_step));
                }
            }
        }
        progress.finish_epoch();
        let train_seconds = pos.seconds;
        let (test_loss, test_acc) = if stopped || !lead {
            (None, None)
        } else {
            let (l, a) = evaluate(&mut exec, test, cfg.batch, normalization.as_ref())?;
            (Some(l), Some(a))
        };
        let metrics = EpochMetrics {
            epoch: pos.epoch + 1,
            train_loss: pos.loss_sum / pos.seen.max(1) as f64,
            train_acc: pos.correct as f64 / pos.seen.max(1) as f64,
            test_loss,
            test_acc,
            seconds: seconds_before + started.elapsed().as_secs_f64(),
            images_per_second: pos.seen as f64 / train_seconds.max(1e-9),
        };
        if lead {
            report(&metrics);
        }
        if let Some(path) = cfg.metrics.as_ref().filter(|_| lead) {
            append_metrics(path, &metrics)?;
        }
        epochs.push(metrics);
        if !stopped {
            pos = Position {
                epoch: pos.epoch + 1,
                global_step: pos.global_step,
                ..Position::default()
            };
        }
        save_now(exec.model(), &opt, &pos)?;
        last_checkpoint = Instant::now();
        if let Some(path) = &cfg.save {
            kept = Some((path.clone(), pos.global_step));
        }
        if !steps_left(&pos) || interrupted {
            break;
        }
    }
    if let Some(path) = cfg.metrics.as_ref().filter(|_| lead) {
        let all = read_metrics(path).unwrap_or_else(|_| epochs.clone());
        // The curves picture comes with the `cli` feature (plotters); the metrics file always.
        #[cfg(feature = "cli")]
        crate::plot::curves(&path.with_extension("svg"), &all)?;
        #[cfg(not(feature = "cli"))]
        let _ = all;
    }
    Ok(TrainReport {
        model: exec.into_model(),
        epochs,
        global_step: pos.global_step,
        interrupted,
        step_times: (ranks > 1).then_some(flat_grads.times),
    })
}

/// Eval-mode loss and accuracy of `exec`'s model on `data`, resized to the model's input size (and
/// normalized, if the model was trained on normalized images).
pub fn evaluate(
    exec: &mut Executor,
    data: &Dataset,
    batch: usize,
    normalization: Option<&Normalization>,
) -> Result<(f64, f64)> {
    let [c, h, w] = exec.graph().input_shape();
    if data.shape[0] != c {
        return Err(Error::shape(
            "evaluation data",
            format!("{c} channel(s) per image"),
            format!("{:?}", data.shape),
        ));
    }
    let batch = batch.min(exec.capacity()).max(1);
    let (mut loss_sum, mut correct) = (0.0, 0usize);
    let mut images = crate::memory::zeroed(batch * c * h * w, "a batch of evaluation images")?;
    for start in (0..data.len()).step_by(batch) {
        let n = batch.min(data.len() - start);
        let images = &mut images[..n * c * h * w];
        network_inputs(data, start..start + n, [c, h, w], normalization, images);
        exec.forward(Images::dense(images, n, c * h * w), Mode::Eval)?;
        let l = exec.loss(&data.labels[start..start + n])?;
        loss_sum += l.loss * n as f64;
        correct += l.correct;
    }
    Ok((loss_sum / data.len() as f64, correct as f64 / data.len() as f64))
}

/// Images `range` of `data` as a network of input `[c, h, w]` takes them: resized (as torchvision's
/// `Resize`) and normalized with `normalization`, one after another into `out`.
pub fn network_inputs(
    data: &Dataset,
    range: std::ops::Range<usize>,
    [c, h, w]: [usize; 3],
    normalization: Option<&Normalization>,
    out: &mut [f32],
) {
    for (i, dst) in range.zip(out.chunks_exact_mut(c * h * w)) {
        let src = &data.images[i * data.image_len()..][..data.image_len()];
        resize_bilinear(src, c, [data.shape[1], data.shape[2]], dst, [h, w], data.from_bytes);
        if let Some(n) = normalization {
            n.apply(dst);
        }
    }
}

/// The mean cross-entropy loss and the accuracy of `logits` (rows of `classes`) against `labels`.
pub fn loss_and_accuracy(logits: &[f32], classes: usize, labels: &[usize]) -> Result<(f64, f64)> {
    crate::ops::loss::check_labels("evaluation", labels, logits.len() / classes.max(1), classes)?;
    let mut probabilities = vec![0.0; logits.len()];
    let loss = crate::ops::loss::forward_rows(logits, classes, classes, labels, 0.0, &mut probabilities);
    let correct = crate::ops::loss::correct_rows(logits, classes, classes, labels);
    Ok((loss, correct as f64 / labels.len().max(1) as f64))
}

fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<()> {
    append_line(path, &m.json())
}

/// Appends one line to `path`, creating the file and its directory if needed.
fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir.display(), e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::file(path.display(), e))?;
    writeln!(f, "{line}").map_err(|e| Error::file(path.display(), e))
}

/// Reads back the metrics lines this module writes (for the plot after a resumed run); a line that is
/// not one is an error naming it.
fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path.display(), e))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| Error::file(path.display(), format!("line {}: not a metrics record: {e}", i + 1)))
        })
        .collect()
}
