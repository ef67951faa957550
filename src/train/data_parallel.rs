//! One data-parallel training step on this rank's shard of a global batch: its gradients, the sums
//! across ranks (loss and accuracy, then the gradients), and the optimizer's step.

use std::time::Instant;

use super::StepTimes;
use crate::distributed::Cluster;
use crate::error::Result;
use crate::graph::{BatchLoss, Executor};
use crate::optim::Optimizer;
use crate::reduction::GradientShard;
use crate::tensor::Images;

/// The buffers of [`step_across`]'s gradient sum, allocated once per run.
pub(super) struct FlatGrads {
    /// This rank's gradients, every parameter after the other.
    pub(super) local: Vec<f32>,
    /// Their sum over the ranks.
    pub(super) summed: Vec<f32>,
    /// Where the steps went.
    pub(super) times: StepTimes,
}

/// This rank's part of one global batch.
pub(super) struct Shard<'a> {
    pub(super) images: Images<'a>,
    pub(super) labels: &'a [usize],
    /// Where they are in the global batch, and how their gradients are summed.
    pub(super) of: GradientShard,
}

/// One data-parallel training step on this rank's shard: its gradients (zero for an empty shard), one
/// sum of the step's loss, accuracy and stop requests across ranks, then, if the global loss is
/// finite, one sum of the gradients (each rank's already those of the global batch's mean loss over
/// its images), and the optimizer step. Returns
/// the global batch's loss, its image count, and whether any rank was asked to stop.
#[allow(clippy::too_many_arguments)]
pub(super) fn step_across(
    exec: &mut Executor,
    cluster: &dyn Cluster,
    shard: Shard<'_>,
    flat: &mut FlatGrads,
    opt: &mut Optimizer,
    lr: f32,
    asked_to_stop: impl Fn() -> bool,
    step: u64,
) -> Result<(BatchLoss, usize, bool)> {
    let n = shard.labels.len();
    let started = Instant::now();
    let local = if n > 0 {
        exec.compute_shard_gradients(shard.images, shard.labels, &shard.of, cluster)?
    } else {
        BatchLoss { loss: 0.0, correct: 0 }
    };
    let mine = [
        local.loss * n as f64,
        local.correct as f64,
        n as f64,
        f64::from(u8::from(asked_to_stop())),
    ];
    let mut totals = [0f64; 4];
    let computed = Instant::now();
    cluster.sum_f64(&mine, &mut totals, &format!("sum of step {step}'s loss"))?;
    let waited = Instant::now();
    let [loss_sum, correct, images, stops] = totals;
    let global = BatchLoss {
        loss: loss_sum / images,
        correct: correct as usize,
    };
    if global.loss.is_finite() {
        let mut at = 0;
        for g in exec.param_grads_mut() {
            let dst = &mut flat.local[at..at + g.len()];
            if n > 0 {
                dst.copy_from_slice(g);
            } else {
                dst.fill(0.0);
            }
            at += g.len();
        }
        cluster.sum_f32(
            &flat.local,
            &mut flat.summed,
            &format!("sum of step {step}'s gradients"),
        )?;
        let mut at = 0;
        for g in exec.param_grads_mut() {
            let len = g.len();
            g.copy_from_slice(&flat.summed[at..at + len]);
            at += len;
        }
        let summed = Instant::now();
        exec.apply_gradients(opt, lr);
        flat.times.gradient_sum += summed - waited;
        flat.times.update += summed.elapsed();
    }
    flat.times.steps += 1;
    flat.times.gradients += computed - started;
    flat.times.waiting += waited - computed;
    Ok((global, images as usize, stops > 0.0))
}
