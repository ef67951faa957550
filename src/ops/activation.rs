//! ReLU and dropout. Each op's math is one function on a batch of images (what the graph executor
//! calls); the ndarray functions are thin wrappers over it.

use ndarray::{Array, ArrayView, Dimension, Zip};
use rayon::prelude::*;

use crate::error::{Error, Result, expect_shape};
use crate::kernels;
use crate::tensor::{Images, ImagesMut};

/// `y = max(x, 0)` on a batch of images.
pub fn relu_images(x: Images<'_>, y: &mut ImagesMut<'_>) {
    y.par_iter_mut().for_each(|(n, out)| {
        out.iter_mut().zip(x.get(n)).for_each(|(o, &v)| *o = v.max(0.0));
    });
}

/// Adds ReLU's input gradient to `dx`, from its output `y`: `dy` where `y > 0` (PyTorch's choice at 0).
pub fn relu_backward_images(dy: Images<'_>, y: Images<'_>, dx: &mut ImagesMut<'_>) {
    dx.par_iter_mut()
        .for_each(|(n, d)| kernels::relu_backward_add(d, dy.get(n), y.get(n)));
}

/// Turns the gradient of a ReLU-fused op's output into the gradient before its ReLU, in place: zero
/// where the output `y` is not positive.
pub fn relu_mask_images(dy: &mut ImagesMut<'_>, y: Images<'_>) {
    dy.par_iter_mut().for_each(|(n, d)| kernels::relu_mask(d, y.get(n)));
}

/// `max(x, 0)` elementwise.
pub fn relu<D: Dimension>(x: ArrayView<f32, D>) -> Array<f32, D> {
    x.mapv(|v| v.max(0.0))
}

/// The ReLU input gradient from its *output* `y`: `dy` where `y > 0`, else 0 (PyTorch's choice at 0).
pub fn relu_backward<D: Dimension>(y: ArrayView<f32, D>, dy: ArrayView<f32, D>) -> Result<Array<f32, D>> {
    expect_shape("relu output gradient", y.shape(), dy.shape())?;
    Ok(Zip::from(&y)
        .and(&dy)
        .map_collect(|&y, &d| if y > 0.0 { d } else { 0.0 }))
}

/// Inverted dropout: in training each value is zeroed with probability `p` and the survivors scaled by
/// `1 / (1 - p)`, so eval mode is the identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing a value, in `[0, 1]`.
    pub p: f32,
}

/// Which values a training forward kept (1) or zeroed (0), kept for backward.
#[derive(Debug, Clone)]
pub struct DropoutMask {
    kept: Vec<u32>,
    shape: Vec<usize>,
}

/// The random stream dropout draws image `n`'s mask from in a pass seeded `seed`: one stream per image,
/// so the mask is the same at any thread count and when images run one at a time.
pub fn image_stream(seed: u64, n: usize) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl Dropout {
    /// Dropout with probability `p`; an error unless `0 <= p <= 1`.
    pub fn new(p: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::config("dropout", format!("p must be in [0, 1], found {p}")));
        }
        Ok(Dropout { p })
    }

    /// The factor a kept value is scaled by, `1 / (1 - p)` (0 when everything is dropped).
    fn keep_scale(&self) -> f32 {
        if self.p < 1.0 { 1.0 / (1.0 - self.p) } else { 0.0 }
    }

    /// Training forward on a batch of images: image `n`'s mask is drawn from [`image_stream`]`(seed,
    /// first + n)` (`first`: the batch index of the first image, when images run one at a time), and
    /// `kept` (one flag per value) records it for backward. `p == 0` copies and keeps everything.
    pub fn forward_images(&self, x: Images<'_>, y: &mut ImagesMut<'_>, kept: &mut [u32], seed: u64, first: usize) {
        let len = x.len();
        if self.p == 0.0 {
            self.identity_images(x, y, kept);
            return;
        }
        let scale = self.keep_scale();
        y.par_iter_mut()
            .zip(kept.par_chunks_mut(len))
            .for_each(|((n, out), kept)| {
                let mut rng = image_stream(seed, first + n);
                for ((o, &v), k) in out.iter_mut().zip(x.get(n)).zip(kept.iter_mut()) {
                    *k = (rng.f32() >= self.p) as u32;
                    *o = if *k == 1 { v * scale } else { 0.0 };
                }
            });
    }

    /// Eval forward: the identity, every value marked kept.
    pub fn identity_images(&self, x: Images<'_>, y: &mut ImagesMut<'_>, kept: &mut [u32]) {
        y.par_iter_mut().for_each(|(n, out)| out.copy_from_slice(x.get(n)));
        kept.fill(1);
    }

    /// Adds the input gradient to `dx`: `dy` scaled by `1 / (1 - p)` where the value was kept, else 0.
    pub fn backward_images(&self, kept: &[u32], dy: Images<'_>, dx: &mut ImagesMut<'_>) {
        let (len, scale) = (dy.len(), self.keep_scale());
        dx.par_iter_mut().for_each(|(n, dx)| {
            let flags = &kept[n * len..][..len];
            for ((d, &g), &k) in dx.iter_mut().zip(dy.get(n)).zip(flags) {
                *d += if k == 1 { g * scale } else { 0.0 };
            }
        });
    }

    /// Training forward on an array whose first axis counts images (a 1-D array is one image), with
    /// the executor's masks: [`Dropout::forward_images`] with `seed`.
    pub fn forward_train<D: Dimension>(&self, x: ArrayView<f32, D>, seed: u64) -> (Array<f32, D>, DropoutMask) {
        let x = x.as_standard_layout();
        let count = if x.ndim() > 1 { x.shape()[0] } else { 1 };
        let flat = x.as_slice().expect("standard layout");
        let len = flat.len() / count.max(1);
        let mut y = Array::zeros(x.raw_dim());
        let mut kept = vec![0u32; flat.len()];
        self.forward_images(
            Images::dense(flat, count, len),
            &mut ImagesMut::dense(y.as_slice_mut().expect("a new array"), count, len),
            &mut kept,
            seed,
            0,
        );
        let shape = x.shape().to_vec();
        (y, DropoutMask { kept, shape })
    }

    /// The input gradient of [`Dropout::forward_train`]: [`Dropout::backward_images`].
    pub fn backward<D: Dimension>(&self, mask: &DropoutMask, dy: ArrayView<f32, D>) -> Result<Array<f32, D>> {
        expect_shape("dropout output gradient", &mask.shape, dy.shape())?;
        let dy = dy.as_standard_layout();
        let count = if dy.ndim() > 1 { dy.shape()[0] } else { 1 };
        let flat = dy.as_slice().expect("standard layout");
        let len = flat.len() / count.max(1);
        let mut dx = Array::zeros(dy.raw_dim());
        self.backward_images(
            &mask.kept,
            Images::dense(flat, count, len),
            &mut ImagesMut::dense(dx.as_slice_mut().expect("a new array"), count, len),
        );
        Ok(dx)
    }
}
