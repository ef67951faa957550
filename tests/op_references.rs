//! Pooling, batch norm, softmax cross-entropy and linear against plain-loop f64 references written straight from PyTorch's
//! definitions, on awkward shapes: channels {1, 3, 4, 13, 16, 17}, odd and non-square maps, stride 2,
//! asymmetric padding, ceil mode. A failing case prints its whole geometry.

mod common;

use common::{max_rel_error, random, random4};
use incept::Padding;
use incept::ndarray::{Array2, Array4, Ix1, Ix2};
use incept::ops::linear::Linear;
use incept::ops::pool::{AvgPool2d, MaxPool2d, PoolWindow};

/// Channel counts, including ones that are not multiples of 8 or 16 (7, 182, 191).
const CHANNELS: [usize; 9] = [1, 3, 4, 7, 13, 16, 17, 182, 191];
const TOLERANCE: f64 = 1e-6;

fn windows() -> Vec<(PoolWindow, [usize; 2])> {
    let mut out = Vec::new();
    let maps = [[9, 7], [6, 11], [12, 12], [5, 8], [13, 10]];
    for &map in &maps {
        for (kernel, stride) in [
            ([3, 3], [2, 2]),
            ([3, 3], [1, 1]),
            ([2, 2], [2, 2]),
            ([3, 2], [2, 1]),
            ([5, 5], [3, 3]),
        ] {
            for padding in [
                Padding::Valid,
                Padding::symmetric(1, 1),
                Padding::explicit(1, 0, 0, 1),
                Padding::Same,
            ] {
                for ceil_mode in [false, true] {
                    let w = PoolWindow {
                        kernel,
                        stride,
                        padding,
                        ceil_mode,
                    };
                    if w.geometry("test", [1, 1, map[0], map[1]]).is_ok() {
                        out.push((w, map));
                    }
                }
            }
        }
    }
    out
}

/// Window `o` of one axis in padded coordinates: `[o * stride - pad_lo, o * stride - pad_lo + kernel)`.
fn taps(o: usize, stride: usize, pad_lo: usize, kernel: usize) -> impl Iterator<Item = isize> {
    let start = (o * stride) as isize - pad_lo as isize;
    start..start + kernel as isize
}

#[test]
fn pools_match_plain_loop_references() {
    let mut cases = 0;
    let (mut worst_max, mut worst_avg) = (0f64, 0f64);
    for (i, (window, [h, w])) in windows().into_iter().enumerate() {
        let c = CHANNELS[i % CHANNELS.len()];
        let input = [2, c, h, w];
        let x = random4(input, i as u64);
        let g = window.geometry("test", input).unwrap();
        let (pt, pb, pl, pr) = (g.h.pad_lo, g.h.pad_hi, g.w.pad_lo, g.w.pad_hi);
        let [_, _, oh, ow] = g.output_shape();
        let what = format!("{window:?} on {input:?} (pads {pt} {pb} {pl} {pr}, output {oh}x{ow})");

        let max_pool = MaxPool2d { window };
        let (y, _) = max_pool.forward(x.view()).unwrap();
        let expected_max = Array4::from_shape_fn([2, c, oh, ow], |(n, ch, oy, ox)| {
            let mut best = f64::NEG_INFINITY;
            for iy in taps(oy, window.stride[0], pt, window.kernel[0]) {
                for ix in taps(ox, window.stride[1], pl, window.kernel[1]) {
                    if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                        best = best.max(x[[n, ch, iy as usize, ix as usize]] as f64);
                    }
                }
            }
            best as f32
        });
        let err = max_rel_error(y.as_slice().unwrap(), expected_max.as_slice().unwrap(), 1e-3);
        assert!(err <= TOLERANCE, "max pool error {err:.2e}: {what}");
        worst_max = worst_max.max(err);

        for include in [true, false] {
            let avg_pool = AvgPool2d {
                window,
                count_include_pad: include,
            };
            let y = avg_pool.forward(x.view()).unwrap();
            let expected = Array4::from_shape_fn([2, c, oh, ow], |(n, ch, oy, ox)| {
                let (mut sum, mut real, mut padded) = (0f64, 0usize, 0usize);
                for iy in taps(oy, window.stride[0], pt, window.kernel[0]) {
                    for ix in taps(ox, window.stride[1], pl, window.kernel[1]) {
                        // PyTorch counts taps inside the padded input, never beyond it (ceil mode's overhang).
                        let in_padded = (-(pt as isize)..(h + pb) as isize).contains(&iy)
                            && (-(pl as isize)..(w + pr) as isize).contains(&ix);
                        padded += in_padded as usize;
                        if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                            sum += x[[n, ch, iy as usize, ix as usize]] as f64;
                            real += 1;
                        }
                    }
                }
                (sum / if include { padded } else { real } as f64) as f32
            });
            let err = max_rel_error(y.as_slice().unwrap(), expected.as_slice().unwrap(), 1e-3);
            assert!(
                err <= TOLERANCE,
                "avg pool (count_include_pad {include}) error {err:.2e}: {what}"
            );
            worst_avg = worst_avg.max(err);
        }
        cases += 1;
    }
    eprintln!("pools vs plain loops over {cases} geometries: worst error max {worst_max:.1e}, avg {worst_avg:.1e}");
}

#[test]
fn batch_norm_matches_a_plain_loop_reference() {
    let worst = common::checks::batch_norm_matches_plain_loops();
    eprintln!("batch norm vs plain loops: worst relative error {worst:.2e}");
}

#[test]
fn softmax_cross_entropy_matches_its_definition() {
    let worst = common::checks::cross_entropy_matches_the_definition();
    eprintln!("softmax cross-entropy vs the f64 definition: worst relative error {worst:.2e}");
}

#[test]
fn linear_matches_a_plain_loop_reference() {
    for (i, &(n, fin, fout)) in [(1, 1, 1), (3, 13, 4), (17, 16, 17), (5, 1024, 10)].iter().enumerate() {
        let layer = Linear::new(fin, fout);
        let x = random(Ix2(n, fin), i as u64);
        let w = random(Ix2(fout, fin), 10 + i as u64);
        let b = random(Ix1(fout), 20 + i as u64);
        let y = layer.forward(x.view(), w.view(), Some(b.view())).unwrap();
        let expected = Array2::from_shape_fn([n, fout], |(r, o)| {
            ((0..fin).map(|k| x[[r, k]] as f64 * w[[o, k]] as f64).sum::<f64>() + b[o] as f64) as f32
        });
        let err = max_rel_error(y.as_slice().unwrap(), expected.as_slice().unwrap(), 1e-3);
        assert!(err <= 1e-5, "linear {n}x{fin} -> {fout}: error {err:.2e}");
    }
}
