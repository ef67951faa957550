//! The reference convolution: plain loops over every (output, tap) pair, accumulating in f64. Slow and
//! obviously right; every fast path is tested against it.

use crate::ops::conv::ConvGeometry;
use crate::tensor::{Images, ImagesMut};

/// Calls `f(input index, weight index, output index)` for every contributing tap of one image, with
/// indices local to the image.
fn for_each_tap(g: &ConvGeometry, mut f: impl FnMut(usize, usize, usize)) {
    let (h, w) = (&g.h, &g.w);
    for co in 0..g.out_channels {
        for oy in 0..h.output {
            for ox in 0..w.output {
                let out_index = (co * h.output + oy) * w.output + ox;
                for ci in 0..g.in_channels {
                    for ky in 0..h.kernel {
                        let Some(iy) = h.input_index(oy, ky) else { continue };
                        for kx in 0..w.kernel {
                            let Some(ix) = w.input_index(ox, kx) else { continue };
                            let in_index = (ci * h.input + iy) * w.input + ix;
                            let w_index = ((co * g.in_channels + ci) * h.kernel + ky) * w.kernel + kx;
                            f(in_index, w_index, out_index);
                        }
                    }
                }
            }
        }
    }
}

pub(in crate::ops::conv) fn forward(
    g: &ConvGeometry,
    x: Images<'_>,
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut ImagesMut<'_>,
) {
    let pixels = g.output_pixels();
    for (n, y_img) in y.iter_mut() {
        let x_img = x.get(n);
        let mut acc: Vec<f64> = (0..y_img.len())
            .map(|o| b.map_or(0.0, |b| b[o / pixels] as f64))
            .collect();
        for_each_tap(g, |i, k, o| acc[o] += x_img[i] as f64 * w[k] as f64);
        for (v, a) in y_img.iter_mut().zip(acc) {
            *v = a as f32;
        }
    }
}

/// Adds the input gradient into `dx`.
pub(in crate::ops::conv) fn backward_input(g: &ConvGeometry, w: &[f32], dy: Images<'_>, dx: &mut ImagesMut<'_>) {
    for (n, dx_img) in dx.iter_mut() {
        let dy_img = dy.get(n);
        let mut acc = vec![0f64; dx_img.len()];
        for_each_tap(g, |i, k, o| acc[i] += w[k] as f64 * dy_img[o] as f64);
        for (d, a) in dx_img.iter_mut().zip(acc) {
            *d += a as f32;
        }
    }
}

/// Adds the weight gradient into `dw`.
pub(in crate::ops::conv) fn backward_weight(g: &ConvGeometry, x: Images<'_>, dy: Images<'_>, dw: &mut [f32]) {
    let mut acc = vec![0f64; dw.len()];
    for n in 0..x.count() {
        let (x_img, dy_img) = (x.get(n), dy.get(n));
        for_each_tap(g, |i, k, o| acc[k] += x_img[i] as f64 * dy_img[o] as f64);
    }
    for (d, a) in dw.iter_mut().zip(&acc) {
        *d += *a as f32;
    }
}
