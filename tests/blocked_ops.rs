//! The other ops on the blocked layout against their NCHW versions, which the PyTorch parity tests hold:
//! average pooling and zero padding give the same bits; batch norm sums in float64 in another order, so
//! it is held to 1e-6 relative, far below float32's own 6e-8-per-operation rounding compounded over the
//! few operations per value. Channel counts that are not multiples of 16 check that padding channels
//! stay zero forward and get no gradient.

use incept::Padding;
use incept::blocked::{self, Halo, Layout};
use incept::geometry::Pads;
use incept::ops::batchnorm::{BatchNorm2d, ChannelStats};
use incept::ops::pool::{AvgPool2d, PoolWindow};
use incept::ops::{pool_blocked, shape};
use incept::tensor::{Images, ImagesMut};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.f32() * 4.0 - 1.5).collect()
}

fn to_blocked(x: &[f32], [_, c, h, w]: [usize; 4]) -> Vec<f32> {
    blocked::batch_from_nchw(x, c, [h, w], Halo::default())
}

fn from_blocked(x: &[f32], [_, c, h, w]: [usize; 4]) -> Vec<f32> {
    blocked::batch_to_nchw(x, c, [h, w])
}

/// Values of the padding channels (lanes past `c` in the last block) of blocked images.
fn padding_lanes(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let len = blocked::image_len(c, [h, w], Halo::default());
    let last = (c.div_ceil(16) - 1) * h * w * 16;
    (0..n)
        .flat_map(|img| (0..h * w).flat_map(move |p| (c % 16..16).map(move |l| (img, p, l))))
        .filter(|_| c % 16 != 0)
        .map(|(img, p, l)| x[img * len + last + p * 16 + l])
        .collect()
}

fn blocked_len(shape: [usize; 4]) -> usize {
    shape[0] * blocked::image_len(shape[1], [shape[2], shape[3]], Halo::default())
}

fn max_rel_error(found: &[f32], want: &[f32]) -> f64 {
    assert_eq!(found.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &v| m.max(v.abs() as f64)).max(1e-30);
    found
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn blocked_average_pooling_matches_the_nchw_one_bit_for_bit() {
    let cases = [
        (
            "3x3/1 pad 1 (inception-v3 branch)",
            AvgPool2d::new([3, 3], [1, 1]),
            Padding::symmetric(1, 1),
            true,
            [2, 19, 7, 7],
        ),
        (
            "3x3/1 pad 1, padding not counted",
            AvgPool2d::new([3, 3], [1, 1]),
            Padding::symmetric(1, 1),
            false,
            [1, 40, 6, 5],
        ),
        (
            "5x5/3 (inception-v3 aux)",
            AvgPool2d::new([5, 5], [3, 3]),
            Padding::Valid,
            true,
            [2, 16, 17, 17],
        ),
        (
            "2x2/2 SAME",
            AvgPool2d::new([2, 2], [2, 2]),
            Padding::Same,
            false,
            [1, 33, 5, 5],
        ),
    ];
    for (name, pool, padding, count_pad, shape) in cases {
        let pool = AvgPool2d {
            window: PoolWindow { padding, ..pool.window },
            ..pool
        }
        .with_count_include_pad(count_pad);
        let g = pool.window.geometry("avg_pool2d", shape).unwrap();
        let out = g.output_shape();
        let (in_len, out_len) = (shape[1..].iter().product(), out[1..].iter().product());
        let (x, dy) = (values(shape.iter().product(), 1), values(out.iter().product(), 2));
        let mut y = vec![0.0; out.iter().product()];
        pool.forward_images(
            &g,
            Images::dense(&x, shape[0], in_len),
            &mut ImagesMut::dense(&mut y, shape[0], out_len),
        );
        let mut dx = vec![0.5; x.len()];
        pool.backward_images(
            &g,
            Images::dense(&dy, shape[0], out_len),
            &mut ImagesMut::dense(&mut dx, shape[0], in_len),
        );

        let (xb, dyb) = (to_blocked(&x, shape), to_blocked(&dy, out));
        let (bin, bout) = (blocked_len(shape) / shape[0], blocked_len(out) / shape[0]);
        let mut yb = vec![f32::NAN; blocked_len(out)];
        let mut ybi = ImagesMut::dense(&mut yb, shape[0], bout);
        pool_blocked::avg_pool_forward_blocked_images(&pool, &g, Images::dense(&xb, shape[0], bin), &mut ybi);
        let mut dxb = to_blocked(&vec![0.5; x.len()], shape);
        let mut dxbi = ImagesMut::dense(&mut dxb, shape[0], bin);
        pool_blocked::avg_pool_backward_blocked_images(&pool, &g, Images::dense(&dyb, shape[0], bout), &mut dxbi);

        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // The NCHW pool against a plain loop in its documented order (each window row summed, the
        // rows summed, divided by PyTorch's divisor), so the vectorized builds are held to it too.
        let [n, c, h, w] = shape;
        let [_, _, oh, ow] = out;
        let mut plain = vec![0.0f32; y.len()];
        for plane in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (ys, xs) = (g.h.window_start(oy), g.w.window_start(ox));
                    let (mut sum, mut cells) = (0.0f32, 0usize);
                    for iy in ys.max(0)..(ys + g.h.kernel as isize).min(h as isize) {
                        let mut row = 0.0f32;
                        for ix in xs.max(0)..(xs + g.w.kernel as isize).min(w as isize) {
                            row += x[(plane * h + iy as usize) * w + ix as usize];
                            cells += 1;
                        }
                        sum += row;
                    }
                    let padded = |s: isize, k: usize, len: usize, pad: usize| {
                        ((s + k as isize).min((len + pad) as isize) - s) as usize
                    };
                    let divisor = if count_pad {
                        padded(ys, g.h.kernel, h, g.h.pad_hi) * padded(xs, g.w.kernel, w, g.w.pad_hi)
                    } else {
                        cells
                    };
                    plain[(plane * oh + oy) * ow + ox] = sum / divisor as f32;
                }
            }
        }
        assert_eq!(bits(&y), bits(&plain), "{name}: NCHW forward against the plain loop");
        assert_eq!(bits(&from_blocked(&yb, out)), bits(&y), "{name}: forward");
        assert_eq!(bits(&from_blocked(&dxb, shape)), bits(&dx), "{name}: input gradient");
        assert!(
            padding_lanes(&yb, out).iter().all(|&v| v == 0.0),
            "{name}: padding channels"
        );
        assert!(
            padding_lanes(&dxb, shape).iter().all(|&v| v == 0.0),
            "{name}: padding gradient"
        );
    }
}

#[test]
fn blocked_zero_padding_matches_the_nchw_one_bit_for_bit() {
    let shape = [2, 21, 4, 6];
    let pads = Pads {
        top: 1,
        bottom: 2,
        left: 0,
        right: 3,
    };
    let out = [2, 21, 4 + 3, 6 + 3];
    let (in_len, out_len) = (21 * 4 * 6, 21 * 7 * 9);
    let (x, dy) = (values(2 * in_len, 3), values(2 * out_len, 4));
    let mut y = vec![f32::NAN; 2 * out_len];
    shape::zero_pad_images(
        Images::dense(&x, 2, in_len),
        [4, 6],
        pads,
        &mut ImagesMut::dense(&mut y, 2, out_len),
    );
    let mut dx = vec![0.25; x.len()];
    shape::zero_pad_backward_images(
        Images::dense(&dy, 2, out_len),
        [4, 6],
        pads,
        &mut ImagesMut::dense(&mut dx, 2, in_len),
    );

    let (bin, bout) = (blocked_len(shape) / 2, blocked_len(out) / 2);
    let (xb, dyb) = (to_blocked(&x, shape), to_blocked(&dy, out));
    let mut yb = vec![f32::NAN; 2 * bout];
    shape::zero_pad_blocked_images(
        Images::dense(&xb, 2, bin),
        [4, 6],
        pads,
        &mut ImagesMut::dense(&mut yb, 2, bout),
    );
    let mut dxb = to_blocked(&vec![0.25; x.len()], shape);
    let dy_images = Images::dense(&dyb, 2, bout);
    shape::zero_pad_backward_blocked_images(dy_images, [4, 6], pads, &mut ImagesMut::dense(&mut dxb, 2, bin));
    assert_eq!(from_blocked(&yb, out), y, "forward");
    assert_eq!(from_blocked(&dxb, shape), dx, "input gradient");
    assert!(padding_lanes(&yb, out).iter().all(|&v| v == 0.0), "padding channels");
}

#[test]
fn blocked_batch_norm_matches_the_nchw_one_in_training_and_eval() {
    for (shape, relu) in [([3, 19, 5, 4], true), ([2, 32, 3, 3], false), ([4, 40, 1, 1], true)] {
        let [n, c, h, w] = shape;
        let bn = BatchNorm2d::new(c).with_eps(1e-3);
        let (len, pixels) = (c * h * w, h * w);
        let x = values(n * len, 5);
        let dy = values(n * len, 6);
        let gamma = values(c, 7);
        let beta = values(c, 8);
        let (running_mean, running_var) = (
            values(c, 9),
            values(c, 10).iter().map(|v| v.abs() + 0.1).collect::<Vec<_>>(),
        );
        let (xb, dyb) = (to_blocked(&x, shape), to_blocked(&dy, shape));
        let blen = blocked_len(shape) / n;
        for train in [true, false] {
            let what = format!("{shape:?} relu {relu} train {train}");
            let (mut stats, mut stats_b) = (ChannelStats::default(), ChannelStats::default());
            if train {
                bn.batch_statistics(Images::dense(&x, n, len), pixels, Layout::Nchw, &mut stats)
                    .unwrap();
                bn.batch_statistics(Images::dense(&xb, n, blen), pixels, Layout::Blocked, &mut stats_b)
                    .unwrap();
                assert!(max_rel_error(&stats_b.mean, &stats.mean) <= 1e-6, "{what}: mean");
                assert!(max_rel_error(&stats_b.var, &stats.var) <= 1e-6, "{what}: variance");
                assert_eq!(stats_b.count, stats.count);
            } else {
                bn.running_statistics(&running_mean, &running_var, &mut stats);
                bn.running_statistics(&running_mean, &running_var, &mut stats_b);
            }
            let mut y = vec![0.0; n * len];
            bn.normalize_images(
                Images::dense(&x, n, len),
                pixels,
                Layout::Nchw,
                &stats,
                &gamma,
                &beta,
                relu,
                &mut ImagesMut::dense(&mut y, n, len),
            );
            let mut yb = vec![f32::NAN; n * blen];
            let mut ybi = ImagesMut::dense(&mut yb, n, blen);
            bn.normalize_images(
                Images::dense(&xb, n, blen),
                pixels,
                Layout::Blocked,
                &stats_b,
                &gamma,
                &beta,
                relu,
                &mut ybi,
            );
            assert!(max_rel_error(&from_blocked(&yb, shape), &y) <= 1e-6, "{what}: forward");
            assert!(
                padding_lanes(&yb, shape).iter().all(|&v| v == 0.0),
                "{what}: padding channels"
            );

            let (mut dgamma, mut dbeta, mut dx) = (vec![0.0; c], vec![0.0; c], vec![0.0; n * len]);
            bn.backward_images(
                Images::dense(&x, n, len),
                Images::dense(&dy, n, len),
                pixels,
                Layout::Nchw,
                &stats,
                &gamma,
                (&mut dgamma, &mut dbeta),
                Some(&mut ImagesMut::dense(&mut dx, n, len)),
            );
            let (mut dgamma_b, mut dbeta_b, mut dxb) = (vec![0.0; c], vec![0.0; c], vec![0.0; n * blen]);
            bn.backward_images(
                Images::dense(&xb, n, blen),
                Images::dense(&dyb, n, blen),
                pixels,
                Layout::Blocked,
                &stats_b,
                &gamma,
                (&mut dgamma_b, &mut dbeta_b),
                Some(&mut ImagesMut::dense(&mut dxb, n, blen)),
            );
            assert!(max_rel_error(&dgamma_b, &dgamma) <= 1e-6, "{what}: d gamma");
            assert!(max_rel_error(&dbeta_b, &dbeta) <= 1e-6, "{what}: d beta");
            assert!(
                max_rel_error(&from_blocked(&dxb, shape), &dx) <= 1e-6,
                "{what}: input gradient"
            );
            assert!(
                padding_lanes(&dxb, shape).iter().all(|&v| v == 0.0),
                "{what}: padding gradient"
            );
        }
    }
}

/// The fused pass gives what the ReLU mask followed by the blocked bias gradient gives, bit for bit.
#[test]
fn the_fused_relu_mask_and_bias_gradient_match_the_two_passes() {
    use incept::ops::activation::relu_mask_images;
    use incept::ops::conv::direct::{bias_grad_blocked, relu_mask_and_bias_grad_blocked};
    let shape = [3, 37, 5, 6];
    let [n, c, h, w] = shape;
    let blen = blocked_len(shape) / n;
    // A ReLU's output: exact zeros where its input was negative.
    let relu_output: Vec<f32> = values(n * c * h * w, 11).iter().map(|v| v.max(0.0)).collect();
    let y = to_blocked(&relu_output, shape);
    let dy = to_blocked(&values(n * c * h * w, 12), shape);
    let (mut dy_two, mut db_two) = (dy.clone(), vec![0.5; c]);
    relu_mask_images(&mut ImagesMut::dense(&mut dy_two, n, blen), Images::dense(&y, n, blen));
    bias_grad_blocked(Images::dense(&dy_two, n, blen), c, h * w, &mut db_two);
    let (mut dy_one, mut db_one) = (dy, vec![0.5; c]);
    let mut dy_images = ImagesMut::dense(&mut dy_one, n, blen);
    relu_mask_and_bias_grad_blocked(&mut dy_images, Images::dense(&y, n, blen), c, h * w, &mut db_one);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&dy_one), bits(&dy_two), "masked gradient");
    assert_eq!(bits(&db_one), bits(&db_two), "bias gradient");
    assert!(
        dy_two.iter().zip(&y).all(|(&g, &v)| v > 0.0 || g == 0.0),
        "the mask zeroes where y <= 0"
    );
    // Against plain float64 loops over the NCHW values: within the one rounding to float32 (plus the
    // float64 sums' own, far below it).
    let dy_nchw = values(n * c * h * w, 12);
    for (ch, &found) in db_one.iter().enumerate() {
        let (mut sum, mut magnitude) = (0.5f64, 0.5f64);
        for img in 0..n {
            for pixel in 0..h * w {
                let at = (img * c + ch) * h * w + pixel;
                if relu_output[at] > 0.0 {
                    sum += dy_nchw[at] as f64;
                    magnitude += (dy_nchw[at] as f64).abs();
                }
            }
        }
        assert!(
            (found as f64 - sum).abs() <= f32::EPSILON as f64 * magnitude.max(sum.abs()),
            "channel {ch}: bias gradient {found}, float64 gives {sum}"
        );
    }
}
