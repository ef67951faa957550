//! int8 inference (issue 30): post-training quantization of a float32 network and the integer network
//! it becomes.
//!
//! The format. Activations are unsigned bytes with a per-tensor scale and zero point,
//! `real = scale · (q - zero_point)` ([`QuantParams`]; after a ReLU the zero point is 0); weights are
//! signed bytes, symmetric, one scale per output channel ([`QuantizedWeights`]). A convolution's sum over
//! u8 inputs and i8 weights (`microkernel::int8`), with its bias at the product scale
//! `x_scale · w_scale[c]` (and the input's zero point folded into it, `bias - zx · Σ w`), is
//! [`requantize`]d into the next layer's bytes.
//!
//! The rooms: `conv.rs` the convolution on u8 images, `requantize_rows.rs` its epilogue in vectors,
//! `pool.rs` pooling, concatenation, zero padding and residual sums on u8 images, `calibrate.rs` the activation ranges,
//! `network.rs` a graph compiled to integer steps and run.

mod calibrate;
mod conv;
mod file;
mod network;
mod pool;
mod requantize_rows;

pub use calibrate::{Calibration, CalibrationMethod, Ranges};
pub use conv::QConv;
pub use file::{Int8Checkpoint, PRECISION_KEY, is_int8};
pub use network::{QuantizedNetwork, Step};
pub use pool::{ConcatPart, add_scaled_u8, avg_pool_u8, concat_u8, max_pool_u8, zero_pad_u8};
pub use requantize_rows::{RequantizeIsa, requantize_pixels};

/// Requantizes a convolution's 32-bit sum `acc` plus `bias` into an unsigned byte: `(acc + bias) ·
/// multiplier` in float32 (the multiplier is `x_scale · w_scale[c] / y_scale`), rounded to nearest even,
/// plus `zero_point`, clamped to `[floor, 255]` (`floor` = the zero point fuses a ReLU). As ONNX
/// Runtime's `MlasRequantizeOutput` computes it: the sum converted to float32, one float32 product.
#[inline]
pub fn requantize(acc: i32, bias: i32, multiplier: f32, zero_point: u8, floor: u8) -> u8 {
    // The integer addition wraps as the vector instructions' does; float32 then rounds the sum itself
    // above 2^24, as MLAS's conversion does.
    let scaled = acc.wrapping_add(bias) as f32 * multiplier;
    let q = scaled.round_ties_even() + f32::from(zero_point);
    q.clamp(f32::from(floor), 255.0) as u8
}

/// How a tensor of unsigned bytes stands for real values: `real = scale · (q - zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantParams {
    /// The real step between consecutive bytes.
    pub scale: f32,
    /// The byte that stands for real 0.
    pub zero_point: u8,
}

impl QuantParams {
    /// The asymmetric u8 parameters for values in `[min, max]`, as ONNX Runtime's MinMax calibration
    /// chooses them: the range widened to include 0 (so 0 is exact and padding is the zero point),
    /// `scale = (max - min) / 255`, `zero_point = round(-min / scale)`. A range of only 0 gets scale 1.
    pub fn from_range(min: f32, max: f32) -> QuantParams {
        let (min, max) = (min.min(0.0), max.max(0.0));
        let scale = (max - min) / 255.0;
        if !(scale > 0.0 && scale.is_finite()) {
            return QuantParams {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        QuantParams { scale, zero_point }
    }

    /// `x` as a byte: `round(x / scale) + zero_point`, saturated to `[0, 255]`.
    #[inline]
    pub fn quantize(self, x: f32) -> u8 {
        ((x / self.scale).round_ties_even() + f32::from(self.zero_point)).clamp(0.0, 255.0) as u8
    }

    /// The real value byte `q` stands for.
    #[inline]
    pub fn dequantize(self, q: u8) -> f32 {
        self.scale * (f32::from(q) - f32::from(self.zero_point))
    }
}

/// A layer's weights as symmetric signed bytes, one scale per output channel: `w ≈ scale[o] · q`, with
/// `q` in `[-127, 127]` (the symmetric range; -128 is never used, as in ONNX Runtime's and oneDNN's
/// per-channel weights).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    /// `[out, rest]` in the float weights' order.
    pub values: Vec<i8>,
    /// One per output channel: `max |w[o]| / 127` (1 for an all-zero channel).
    pub scales: Vec<f32>,
}

impl QuantizedWeights {
    /// Quantizes `w`, `outputs` rows of equal length.
    pub fn new(w: &[f32], outputs: usize) -> QuantizedWeights {
        let per_output = w.len() / outputs.max(1);
        assert_eq!(per_output * outputs, w.len(), "weights of whole output rows");
        let mut values = vec![0i8; w.len()];
        let mut scales = vec![1.0f32; outputs];
        for ((row, q), scale) in w
            .chunks(per_output.max(1))
            .zip(values.chunks_mut(per_output.max(1)))
            .zip(&mut scales)
        {
            let largest = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if largest > 0.0 && largest.is_finite() {
                *scale = largest / 127.0;
            }
            for (q, &v) in q.iter_mut().zip(row) {
                *q = (v / *scale).round_ties_even().clamp(-127.0, 127.0) as i8;
            }
        }
        QuantizedWeights { values, scales }
    }
}
