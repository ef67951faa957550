//! The int8 format of int8 inference (issue 30, in progress: no op uses it yet). Activations are
//! unsigned bytes with a per-tensor scale and zero point, `real = scale · (q - zero_point)` (after a ReLU
//! the zero point is 0); weights are signed bytes, symmetric, one scale per output channel. A
//! convolution's sum over u8 inputs and i8 weights (`microkernel::int8`), with its bias at the product
//! scale `x_scale · w_scale[c]` (and the input's zero point folded into it, `bias - zx · Σ w`), is
//! [`requantize`]d into the next layer's bytes.

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
