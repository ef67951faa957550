//! Optimizers with PyTorch's update rules, and learning-rate schedules. An optimizer's state (moment
//! estimates, momentum buffers, step count) is exposed as named slots so checkpoints can save and restore
//! it exactly.

mod adam;
mod rmsprop;
mod schedule;
mod sgd;

pub use adam::Adam;
pub use rmsprop::RmsProp;
pub use schedule::Schedule;
pub use sgd::Sgd;

use crate::error::{Error, Result};

/// One of the supported optimizers.
#[derive(Debug, Clone)]
pub enum Optimizer {
    /// Adam.
    Adam(Adam),
    /// SGD with momentum, Nesterov and weight decay.
    Sgd(Sgd),
    /// RMSProp with momentum, centering and weight decay.
    RmsProp(RmsProp),
}

impl Optimizer {
    /// Applies one update with learning rate `lr` to every parameter from its gradient. A parameter whose
    /// gradient is empty (batch norm's running statistics) is left alone.
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f32) {
        match self {
            Optimizer::Adam(o) => o.step(params, grads, lr),
            Optimizer::Sgd(o) => o.step(params, grads, lr),
            Optimizer::RmsProp(o) => o.step(params, grads, lr),
        }
    }

    /// The command-line name: `adam`, `sgd` or `rmsprop`.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Adam(_) => "adam",
            Optimizer::Sgd(_) => "sgd",
            Optimizer::RmsProp(_) => "rmsprop",
        }
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        match self {
            Optimizer::Adam(o) => o.steps,
            Optimizer::Sgd(o) => o.steps,
            Optimizer::RmsProp(o) => o.steps,
        }
    }

    /// The state as `(slot name, one vector per parameter)`.
    pub fn slots(&self) -> Vec<(&'static str, &[Vec<f32>])> {
        match self {
            Optimizer::Adam(o) => vec![("exp_avg", &o.exp_avg[..]), ("exp_avg_sq", &o.exp_avg_sq[..])],
            Optimizer::Sgd(o) => vec![("momentum_buffer", &o.momentum_buffer[..])],
            // Only the buffers the settings use: a run restored with other settings fails on the slot list.
            Optimizer::RmsProp(o) => {
                let mut slots = vec![("square_avg", &o.square_avg[..])];
                if o.momentum != 0.0 {
                    slots.push(("momentum_buffer", &o.momentum_buffer[..]));
                }
                if o.centered {
                    slots.push(("grad_avg", &o.grad_avg[..]));
                }
                slots
            }
        }
    }

    /// Restores the state saved by [`Optimizer::slots`] and [`Optimizer::steps`].
    pub fn restore(&mut self, steps: u64, slots: Vec<(String, Vec<Vec<f32>>)>) -> Result<()> {
        let expected: Vec<&str> = self.slots().iter().map(|s| s.0).collect();
        let found: Vec<&str> = slots.iter().map(|s| s.0.as_str()).collect();
        if expected != found {
            return Err(Error::config(
                self.name(),
                format!("optimizer state slots {found:?}, expected {expected:?}"),
            ));
        }
        let mut slots = slots.into_iter().map(|s| s.1);
        match self {
            Optimizer::Adam(o) => {
                o.exp_avg = slots.next().unwrap_or_default();
                o.exp_avg_sq = slots.next().unwrap_or_default();
                o.steps = steps;
            }
            Optimizer::Sgd(o) => {
                o.momentum_buffer = slots.next().unwrap_or_default();
                o.steps = steps;
            }
            Optimizer::RmsProp(o) => {
                o.square_avg = slots.next().unwrap_or_default();
                if o.momentum != 0.0 {
                    o.momentum_buffer = slots.next().unwrap_or_default();
                }
                if o.centered {
                    o.grad_avg = slots.next().unwrap_or_default();
                }
                o.steps = steps;
            }
        }
        Ok(())
    }
}

/// Zero-filled state shaped like `params`.
fn zeros_like(params: &[usize]) -> Vec<Vec<f32>> {
    params.iter().map(|&n| vec![0.0; n]).collect()
}
