//! Adam as PyTorch's `torch.optim.Adam` (no amsgrad): L2 weight decay added to the gradient,
//! `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.

use rayon::prelude::*;

/// Adam's settings and state.
#[derive(Debug, Clone)]
pub struct Adam {
    /// Decay of the first moment (PyTorch 0.9).
    pub beta1: f32,
    /// Decay of the second moment (PyTorch 0.999).
    pub beta2: f32,
    /// Added to the denominator (PyTorch 1e-8).
    pub eps: f32,
    /// L2 penalty added to the gradient (PyTorch 0).
    pub weight_decay: f32,
    /// Updates applied so far.
    pub steps: u64,
    /// First moments, one vector per parameter.
    pub exp_avg: Vec<Vec<f32>>,
    /// Second moments, one vector per parameter.
    pub exp_avg_sq: Vec<Vec<f32>>,
}

impl Adam {
    /// PyTorch's defaults for parameters of the given lengths.
    pub fn new(param_lens: &[usize]) -> Self {
        Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            steps: 0,
            exp_avg: super::zeros_like(param_lens),
            exp_avg_sq: super::zeros_like(param_lens),
        }
    }

    /// One update.
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f32) {
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        let step_size = lr / (1.0 - b1.powi(t));
        let bias_correction2_sqrt = (1.0 - b2.powi(t)).sqrt();
        params
            .par_iter_mut()
            .zip(grads)
            .zip(&mut self.exp_avg)
            .zip(&mut self.exp_avg_sq)
            .for_each(|(((p, g), m), v)| {
                let coefficients = AdamCoefficients {
                    b1,
                    b2,
                    eps,
                    wd,
                    step_size,
                    bias_correction2_sqrt,
                };
                crate::kernels::vectorize(AdamKernel(p, g, m, v, coefficients));
            });
    }
}

/// One step's scalars, the same for every element.
#[derive(Clone, Copy)]
struct AdamCoefficients {
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
}

/// The element-wise update of one parameter tensor, run through runtime SIMD dispatch.
struct AdamKernel<'a>(&'a mut [f32], &'a [f32], &'a mut [f32], &'a mut [f32], AdamCoefficients);

impl pulp::WithSimd for AdamKernel<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let AdamKernel(p, g, m, v, c) = self;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g + c.wd * *p;
            *m = c.b1 * *m + (1.0 - c.b1) * g;
            *v = c.b2 * *v + (1.0 - c.b2) * g * g;
            *p -= c.step_size * *m / (v.sqrt() / c.bias_correction2_sqrt + c.eps);
        }
    }
}
