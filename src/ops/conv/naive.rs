//! The reference convolution: plain loops over every (output, tap) pair, accumulating in f64. Slow and
//! obviously right; every fast path is tested against it.

use super::ConvGeometry;

/// Iterates every contributing (input index, weight index, output index) triple of image `n`.
fn for_each_tap(g: &ConvGeometry, n: usize, mut f: impl FnMut(usize, usize, usize)) {
    let (h, w) = (&g.h, &g.w);
    for co in 0..g.out_channels {
        for oy in 0..h.output {
            for ox in 0..w.output {
                let out_index = ((n * g.out_channels + co) * h.output + oy) * w.output + ox;
                for ci in 0..g.in_channels {
                    for ky in 0..h.kernel {
                        let Some(iy) = h.input_index(oy, ky) else {
                            continue;
                        };
                        for kx in 0..w.kernel {
                            let Some(ix) = w.input_index(ox, kx) else {
                                continue;
                            };
                            let in_index = ((n * g.in_channels + ci) * h.input + iy) * w.input + ix;
                            let w_index = ((co * g.in_channels + ci) * h.kernel + ky) * w.kernel + kx;
                            f(in_index, w_index, out_index);
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32]) {
    let mut acc = vec![0f64; y.len()];
    for n in 0..g.batch {
        for_each_tap(g, n, |i, k, o| acc[o] += x[i] as f64 * w[k] as f64);
    }
    let pixels = g.output_pixels();
    for (o, (y, a)) in y.iter_mut().zip(&acc).enumerate() {
        let bias = b.map_or(0.0, |b| b[(o / pixels) % g.out_channels] as f64);
        *y = (a + bias) as f32;
    }
}

pub(super) fn backward_input(g: &ConvGeometry, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let mut acc = vec![0f64; dx.len()];
    for n in 0..g.batch {
        for_each_tap(g, n, |i, k, o| acc[i] += w[k] as f64 * dy[o] as f64);
    }
    for (d, a) in dx.iter_mut().zip(&acc) {
        *d = *a as f32;
    }
}

pub(super) fn backward_weight(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let mut acc = vec![0f64; dw.len()];
    for n in 0..g.batch {
        for_each_tap(g, n, |i, k, o| acc[k] += x[i] as f64 * dy[o] as f64);
    }
    for (d, a) in dw.iter_mut().zip(&acc) {
        *d += *a as f32;
    }
}
