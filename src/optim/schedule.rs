//! Learning-rate schedules, evaluated once per epoch as PyTorch's schedulers are stepped.

/// How the learning rate changes with the epoch (0-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `every` epochs (PyTorch's `StepLR`).
    Step {
        /// Epochs between decays.
        every: usize,
        /// Factor per decay.
        gamma: f32,
    },
    /// Cosine from the base rate to `min_lr` over `epochs` (PyTorch's `CosineAnnealingLR`).
    Cosine {
        /// The epoch count of one half-period.
        epochs: usize,
        /// The rate at the end.
        min_lr: f32,
    },
}

impl Schedule {
    /// The learning rate for `epoch`.
    pub fn lr(&self, base: f32, epoch: usize) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            Schedule::Cosine { epochs, min_lr } => {
                let t = epoch.min(epochs) as f32 / epochs.max(1) as f32;
                min_lr + (base - min_lr) * (1.0 + (std::f32::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_pytorch() {
        assert_eq!(Schedule::Constant.lr(0.1, 7), 0.1);
        let step = Schedule::Step { every: 2, gamma: 0.5 };
        assert_eq!([0, 1, 2, 3, 4].map(|e| step.lr(1.0, e)), [1.0, 1.0, 0.5, 0.5, 0.25]);
        let cosine = Schedule::Cosine { epochs: 4, min_lr: 0.0 };
        assert!((cosine.lr(1.0, 2) - 0.5).abs() < 1e-6 && cosine.lr(1.0, 4).abs() < 1e-6);
    }
}
