//! What a training run checks before any work, each with one clear error: its settings, the data, the
//! memory it will need, and a checkpoint to resume that another run's settings wrote.

use std::collections::HashMap;
use std::path::Path;

use super::{OptimizerKind, TrainConfig, build_optimizer};
use crate::data::Dataset;
use crate::distributed::Cluster;
use crate::error::{Error, Result};
use crate::graph::Executor;
use crate::io::checkpoint::TensorFile;
use crate::models::ModelConfig;

/// Refuses to resume from a checkpoint (`metadata` of the file at `path`) that a run with other
/// settings than `cfg`'s wrote: model, input, normalization, optimizer, batch, seed, shuffling.
pub(super) fn check_resume(cfg: &TrainConfig, metadata: &HashMap<String, String>, path: &Path) -> Result<()> {
    let check = |key: &str, expected: String| -> Result<()> {
        let found = metadata
            .get(key)
            .ok_or_else(|| Error::file(path.display(), format!("metadata {key} is missing")))?;
        if *found != expected {
            return Err(Error::file(
                path.display(),
                format!("was saved with {key} {found}, this run has {expected}"),
            ));
        }
        Ok(())
    };
    check("model", cfg.model.clone())?;
    check("in_channels", cfg.config.in_channels.to_string())?;
    check("height", cfg.config.size[0].to_string())?;
    check("width", cfg.config.size[1].to_string())?;
    if crate::io::checkpoint::Recorded::from_metadata(metadata, path)?.normalized != cfg.normalize {
        let (was, now) = if cfg.normalize {
            ("without", "with")
        } else {
            ("with", "without")
        };
        return Err(Error::file(
            path.display(),
            format!("was saved by a run {was} --normalize, this run is {now} it"),
        ));
    }
    check("optimizer", build_optimizer(cfg, &[]).name().to_string())?;
    check("batch", cfg.batch.to_string())?;
    check("seed", cfg.seed.to_string())?;
    check("shuffle", cfg.shuffle.to_string())
}

/// Everything about a run of `cfg` on `images` training images across `cluster` that can be refused
/// before any work, each with one clear error: batch and epochs, the optimizer's settings, the output
/// paths (on rank 0, which writes them), the memory the run needs ([`check_memory`]), a checkpoint to
/// resume that another run's settings wrote, and unreadable `--init` / `--resume` headers. [`train`]
/// runs it first; a caller that prints before training runs it before that.
pub fn check_before_work(cfg: &TrainConfig, images: usize, cluster: &dyn Cluster) -> Result<()> {
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(Error::config("train", "batch and epochs must be at least 1"));
    }
    check_optimizer(cfg)?;
    if cluster.rank() == 0 {
        let outputs = [
            ("save", &cfg.save),
            ("metrics", &cfg.metrics),
            ("step_log", &cfg.step_log),
        ];
        for (what, path) in outputs {
            if let Some(path) = path {
                crate::io::output::check_file(what, path)?;
            }
        }
    }
    if let Some(init) = cfg.init.as_deref().filter(|p| !crate::onnx::is_onnx(p)) {
        TensorFile::read_metadata(init)?;
    }
    if let Some(resume) = &cfg.resume {
        check_resume(cfg, &TensorFile::read_metadata(resume)?, resume)?;
    }
    check_memory(cfg, images, cluster.size())
}

/// Rejects settings PyTorch's optimizers reject, and label smoothing outside [0, 1), naming the setting
/// and the value found.
fn check_optimizer(cfg: &TrainConfig) -> Result<()> {
    let bad = |what: &str, expected: &str, found: f32| {
        Err(Error::config(
            "train",
            format!("{what} must be {expected}, found {found}"),
        ))
    };
    // False for NaN too.
    let at_least_zero = |v: f32| v >= 0.0;
    if !(0.0..1.0).contains(&cfg.label_smoothing) {
        return bad("label smoothing", "in [0, 1)", cfg.label_smoothing);
    }
    if !(at_least_zero(cfg.lr) && cfg.lr.is_finite()) {
        return bad("the learning rate", "finite and at least 0", cfg.lr);
    }
    if !at_least_zero(cfg.weight_decay) {
        return bad("weight decay", "at least 0", cfg.weight_decay);
    }
    match cfg.optimizer {
        OptimizerKind::Sgd { momentum, .. } if !at_least_zero(momentum) => bad("momentum", "at least 0", momentum),
        OptimizerKind::RmsProp { alpha, .. } if !(0.0..=1.0).contains(&alpha) => {
            bad("RMSProp's alpha", "in [0, 1]", alpha)
        }
        OptimizerKind::RmsProp { eps, .. } if !at_least_zero(eps) => bad("RMSProp's eps", "at least 0", eps),
        OptimizerKind::RmsProp { momentum, .. } if !at_least_zero(momentum) => bad("momentum", "at least 0", momentum),
        _ => Ok(()),
    }
}

/// Refuses a run of `cfg` on `images` training images over `ranks` processes whose buffers exceed the
/// memory available ([`crate::memory::check_batch`]), before anything is allocated: activations and
/// their gradients, the workspace, parameters with their packed copies, parameter gradients and the
/// optimizer's state (at most three values per parameter), the data-parallel gradient sum, and the input
/// batches (the loader's queue of two, the one it fills, the step's, evaluation's). A batch larger than
/// the training set is planned as the one batch of all of it that it is. [`train`] checks this first.
pub fn check_memory(cfg: &TrainConfig, images: usize, ranks: usize) -> Result<()> {
    let graph = &cfg.build_graph()?;
    let capacity = cfg.batch.min(images).max(1);
    let options = crate::graph::PlanOptions {
        conv_algo: cfg.conv_algo,
        precision: cfg.precision,
        ..Default::default()
    };
    let params: u64 = graph.params.iter().map(|p| p.len() as u64 * 4).sum();
    let image_bytes = 4 * graph.input_shape().iter().product::<usize>() as u64;
    let need = |b: usize| {
        let mut need = Executor::memory_need(graph, options, b, true)?;
        need.parameters = need.parameters.saturating_add(if ranks > 1 { 2 * params } else { 0 });
        need.inputs = image_bytes.saturating_mul(5 * b as u64);
        Ok(need)
    };
    let [_, h, w] = graph.input_shape();
    let whole_set = match cfg.batch > images {
        true => format!(" (one batch of all {images} training images)"),
        false => String::new(),
    };
    crate::memory::check_batch(
        capacity,
        &format!("batch {}{whole_set} at {h}x{w}", cfg.batch),
        need,
        |k| match k {
            Some(k) => format!("try --batch {k}"),
            None => "try a smaller --resize".to_string(),
        },
    )
}

pub(super) fn check_data(what: &str, data: &Dataset, config: ModelConfig) -> Result<()> {
    if data.is_empty() {
        return Err(Error::config("train", format!("the {what} is empty")));
    }
    if data.shape[0] != config.in_channels {
        return Err(Error::shape(
            what,
            format!("{} channel(s) per image, as the model takes", config.in_channels),
            format!("{:?}", data.shape),
        ));
    }
    if let Some((i, &l)) = data.labels.iter().enumerate().find(|&(_, &l)| l >= config.classes) {
        return Err(Error::Label {
            op: what.to_string(),
            index: i,
            label: l,
            classes: config.classes,
        });
    }
    Ok(())
}
