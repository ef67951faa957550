//! RMSProp as PyTorch's `torch.optim.RMSprop`: `g += wd * p`; `v = alpha * v + (1 - alpha) * g²`;
//! centered: `a = alpha * a + (1 - alpha) * g` and the denominator uses `v - a²`;
//! `d = sqrt(v [- a²]) + eps`; with momentum `buf = mu * buf + g / d` and `p -= lr * buf`, else
//! `p -= lr * g / d`. PyTorch's defaults are alpha 0.99 and eps 1e-8; the Inception-v3 paper trains with
//! decay 0.9 and eps 1.0.

use rayon::prelude::*;

/// RMSProp's settings and state.
#[derive(Debug, Clone)]
pub struct RmsProp {
    /// Decay of the squared-gradient average (`alpha`, the paper's "decay").
    pub alpha: f32,
    /// Added to the denominator's square root.
    pub eps: f32,
    /// Momentum factor (0 disables the buffer).
    pub momentum: f32,
    /// Normalize by the variance instead of the second moment.
    pub centered: bool,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
    /// Updates applied so far.
    pub steps: u64,
    /// Running average of squared gradients, one vector per parameter.
    pub square_avg: Vec<Vec<f32>>,
    /// Momentum buffers (empty vectors without momentum).
    pub momentum_buffer: Vec<Vec<f32>>,
    /// Running average of gradients (empty vectors unless centered).
    pub grad_avg: Vec<Vec<f32>>,
}

impl RmsProp {
    /// RMSProp for parameters of the given lengths. Buffers exist only for what the settings use.
    pub fn new(param_lens: &[usize], alpha: f32, eps: f32, momentum: f32, centered: bool, weight_decay: f32) -> Self {
        let used = |on: bool| param_lens.iter().map(|&n| vec![0.0; if on { n } else { 0 }]).collect();
        RmsProp {
            alpha,
            eps,
            momentum,
            centered,
            weight_decay,
            steps: 0,
            square_avg: super::zeros_like(param_lens),
            momentum_buffer: used(momentum != 0.0),
            grad_avg: used(centered),
        }
    }

    /// One update.
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f32) {
        self.steps += 1;
        let settings = Settings {
            alpha: self.alpha,
            eps: self.eps,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            lr,
        };
        params
            .par_iter_mut()
            .zip(grads)
            .zip(&mut self.square_avg)
            .zip(&mut self.momentum_buffer)
            .zip(&mut self.grad_avg)
            .for_each(|((((p, g), v), buf), a)| {
                crate::kernels::vectorize(Kernel {
                    p,
                    g,
                    v,
                    buf,
                    a,
                    settings,
                });
            });
    }
}

/// One step's scalars.
#[derive(Clone, Copy)]
struct Settings {
    alpha: f32,
    eps: f32,
    momentum: f32,
    weight_decay: f32,
    lr: f32,
}

/// The element-wise update of one parameter tensor, run through runtime SIMD dispatch. `buf` and `a`
/// are empty when momentum or centering is off.
struct Kernel<'a> {
    p: &'a mut [f32],
    g: &'a [f32],
    v: &'a mut [f32],
    buf: &'a mut [f32],
    a: &'a mut [f32],
    settings: Settings,
}

impl pulp::WithSimd for Kernel<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Kernel {
            p,
            g,
            v,
            buf,
            a,
            settings: s,
        } = self;
        let centered = !a.is_empty();
        let with_momentum = !buf.is_empty();
        // An empty gradient (batch norm's running statistics) leaves the parameter alone.
        for i in 0..g.len().min(p.len()) {
            let grad = g[i] + s.weight_decay * p[i];
            v[i] = s.alpha * v[i] + (1.0 - s.alpha) * grad * grad;
            let second = if centered {
                a[i] += (1.0 - s.alpha) * (grad - a[i]);
                v[i] - a[i] * a[i]
            } else {
                v[i]
            };
            let step = grad / (second.sqrt() + s.eps);
            if with_momentum {
                buf[i] = s.momentum * buf[i] + step;
                p[i] -= s.lr * buf[i];
            } else {
                p[i] -= s.lr * step;
            }
        }
    }
}
