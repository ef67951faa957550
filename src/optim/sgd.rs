//! SGD as PyTorch's `torch.optim.SGD` (dampening 0): `g += wd * p`; with momentum `buf = mu * buf + g`
//! (the first step sets `buf = g`), then `g = g + mu * buf` (Nesterov) or `g = buf`; `p -= lr * g`.

use rayon::prelude::*;

/// SGD's settings and state.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Momentum factor (0 disables the buffer).
    pub momentum: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
    /// Updates applied so far.
    pub steps: u64,
    /// Momentum buffers, one vector per parameter.
    pub momentum_buffer: Vec<Vec<f32>>,
}

impl Sgd {
    /// Plain SGD for parameters of the given lengths; set the fields for momentum and decay.
    pub fn new(param_lens: &[usize], momentum: f32, nesterov: bool, weight_decay: f32) -> Self {
        Sgd {
            momentum,
            nesterov,
            weight_decay,
            steps: 0,
            momentum_buffer: super::zeros_like(param_lens),
        }
    }

    /// One update.
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f32) {
        let first = self.steps == 0;
        self.steps += 1;
        let (mu, nesterov, wd) = (self.momentum, self.nesterov, self.weight_decay);
        params
            .par_iter_mut()
            .zip(grads)
            .zip(&mut self.momentum_buffer)
            .for_each(|((p, g), buf)| {
                for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
                    let mut d = g + wd * *p;
                    if mu != 0.0 {
                        *b = if first { d } else { mu * *b + d };
                        d = if nesterov { d + mu * *b } else { *b };
                    }
                    *p -= lr * d;
                }
            });
    }
}
