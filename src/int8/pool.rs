//! Pooling, concatenation, zero padding and the scaled residual sum on blocked u8 images (`[c/16][h][w][16]`, no halo), one image at a time.
//! Max pooling is exact on bytes (the order of bytes is the order of the values they stand for);
//! average pooling rounds the window's mean to the nearest byte in the same parameters; a
//! concatenation copies each part, requantizing those whose parameters differ from the output's.

use super::QuantParams;
use crate::microkernel::LANES;
use crate::ops::pool::{AvgPool2d, PoolGeometry, clipped};

/// Max pooling of one blocked u8 image `x` into `y` (same parameters: padding never wins).
pub fn max_pool_u8(g: &PoolGeometry, x: &[u8], y: &mut [u8]) {
    let (h, w, oh, ow) = (g.h.input, g.w.input, g.h.output, g.w.output);
    let blocks = g.channels.div_ceil(LANES);
    assert_eq!(x.len(), blocks * h * w * LANES, "blocked u8 input");
    assert_eq!(y.len(), blocks * oh * ow * LANES, "blocked u8 output");
    for (x_plane, y_plane) in x.chunks_exact(h * w * LANES).zip(y.chunks_exact_mut(oh * ow * LANES)) {
        let pixel = |iy: usize, ix: usize| -> &[u8; LANES] {
            x_plane[(iy * w + ix) * LANES..][..LANES].try_into().expect("16 lanes")
        };
        for oy in 0..oh {
            let rows = clipped(&g.h, oy);
            for (ox, out) in y_plane[oy * ow * LANES..][..ow * LANES]
                .chunks_exact_mut(LANES)
                .enumerate()
            {
                let cols = clipped(&g.w, ox);
                // Whole 16-byte pixels, maxed as one vector each.
                let mut best = [0u8; LANES];
                for iy in rows.clone() {
                    for ix in cols.clone() {
                        let p = pixel(iy, ix);
                        best = std::array::from_fn(|lane| best[lane].max(p[lane]));
                    }
                }
                out.copy_from_slice(&best);
            }
        }
    }
}

/// Average pooling of one blocked u8 image `x` into `y`, both in `params`: each output is the window's
/// mean of the real values (padding is real 0), `(Σ q - n · zero_point) / divisor` with `pool`'s divisor
/// rule, rounded to nearest even, plus the zero point, saturated.
pub fn avg_pool_u8(pool: &AvgPool2d, g: &PoolGeometry, params: QuantParams, x: &[u8], y: &mut [u8]) {
    let (h, w, oh, ow) = (g.h.input, g.w.input, g.h.output, g.w.output);
    let blocks = g.channels.div_ceil(LANES);
    assert_eq!(x.len(), blocks * h * w * LANES, "blocked u8 input");
    assert_eq!(y.len(), blocks * oh * ow * LANES, "blocked u8 output");
    let zero_point = f32::from(params.zero_point);
    for (x_plane, y_plane) in x.chunks_exact(h * w * LANES).zip(y.chunks_exact_mut(oh * ow * LANES)) {
        for oy in 0..oh {
            let rows = clipped(&g.h, oy);
            for ox in 0..ow {
                let cols = clipped(&g.w, ox);
                let mut sum = [0i32; LANES];
                for iy in rows.clone() {
                    for ix in cols.clone() {
                        let pixel = &x_plane[(iy * w + ix) * LANES..][..LANES];
                        for (s, &v) in sum.iter_mut().zip(pixel) {
                            *s += i32::from(v);
                        }
                    }
                }
                let real = (rows.len() * cols.len()) as i32 * i32::from(params.zero_point);
                let divisor = pool.divisor(g, oy, ox);
                for (out, s) in y_plane[(oy * ow + ox) * LANES..][..LANES].iter_mut().zip(sum) {
                    let mean = (s - real) as f32 / divisor;
                    *out = (mean.round_ties_even() + zero_point).clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

/// One input of [`concat_u8`]: a blocked u8 image of `channels` channels in `params`.
#[derive(Debug, Clone, Copy)]
pub struct ConcatPart<'a> {
    /// The image.
    pub image: &'a [u8],
    /// Its channels.
    pub channels: usize,
    /// Its parameters.
    pub params: QuantParams,
}

/// Concatenates `parts` (all on an `[h, w]` map) along the channels into the blocked u8 image `out` in
/// `params`: a part in the same parameters whose channels start on a block boundary is copied plane by
/// plane; any other value goes one by one, requantized as `round((q - zp) · scale / out_scale) + out_zp`.
pub fn concat_u8(parts: &[ConcatPart<'_>], [h, w]: [usize; 2], params: QuantParams, out: &mut [u8]) {
    let plane = h * w * LANES;
    let channels: usize = parts.iter().map(|p| p.channels).sum();
    assert_eq!(out.len(), channels.div_ceil(LANES) * plane, "blocked u8 output");
    let mut first = 0;
    for part in parts {
        assert_eq!(
            part.image.len(),
            part.channels.div_ceil(LANES) * plane,
            "blocked u8 part"
        );
        let aligned = first % LANES == 0 && (part.channels % LANES == 0 || first + part.channels == channels);
        if part.params == params && aligned {
            out[first / LANES * plane..][..part.image.len()].copy_from_slice(part.image);
        } else {
            let ratio = part.params.scale / params.scale;
            let (from_zero, to_zero) = (i32::from(part.params.zero_point), f32::from(params.zero_point));
            for c in 0..part.channels {
                let (to, from) = (first + c, c);
                let src = &part.image[from / LANES * plane + from % LANES..];
                let dst = &mut out[to / LANES * plane + to % LANES..];
                for p in 0..h * w {
                    let real = (i32::from(src[p * LANES]) - from_zero) as f32 * ratio;
                    dst[p * LANES] = (real.round_ties_even() + to_zero).clamp(0.0, 255.0) as u8;
                }
            }
        }
        first += part.channels;
    }
}

/// Zero padding of one blocked u8 image `x` of `channels` channels on `[h, w]` into `y` by `pads`: the
/// new border is the zero point (real 0), the values are copied.
pub fn zero_pad_u8(
    x: &[u8],
    channels: usize,
    [h, w]: [usize; 2],
    pads: crate::geometry::Pads,
    zero_point: u8,
    y: &mut [u8],
) {
    let (oh, ow) = (h + pads.top + pads.bottom, w + pads.left + pads.right);
    let blocks = channels.div_ceil(LANES);
    assert_eq!(x.len(), blocks * h * w * LANES, "blocked u8 input");
    assert_eq!(y.len(), blocks * oh * ow * LANES, "blocked u8 output");
    y.fill(zero_point);
    let at = pads.top * ow + pads.left;
    for (x_plane, y_plane) in x.chunks_exact(h * w * LANES).zip(y.chunks_exact_mut(oh * ow * LANES)) {
        for (row, x_row) in x_plane.chunks_exact(w * LANES).enumerate() {
            y_plane[(at + row * ow) * LANES..][..w * LANES].copy_from_slice(x_row);
        }
    }
}

/// `a + scale · b` (then `max(·, 0)` with `relu`) of two byte images of the same shape, each with its
/// parameters, on their real values in float32, rounded to the nearest byte of `params`, saturated.
pub fn add_scaled_u8(
    (a, a_params): (&[u8], QuantParams),
    (b, b_params): (&[u8], QuantParams),
    scale: f32,
    relu: bool,
    params: QuantParams,
    out: &mut [u8],
) {
    assert!(a.len() == b.len() && a.len() == out.len(), "images of the same shape");
    let floor = if relu { f32::from(params.zero_point) } else { 0.0 };
    for ((y, &qa), &qb) in out.iter_mut().zip(a).zip(b) {
        let real = a_params.dequantize(qa) + scale * b_params.dequantize(qb);
        let q = (real / params.scale).round_ties_even() + f32::from(params.zero_point);
        *y = q.clamp(floor, 255.0) as u8;
    }
}
