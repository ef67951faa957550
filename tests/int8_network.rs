//! int8 pooling and concatenation against the float32 ops on the real values the bytes stand for, and
//! the compiled network: the same logits bit for bit on every kernel build and whether images run one by
//! one or several across the pool.

use incept::geometry::Padding;
use incept::graph::Executor;
use incept::int8::{
    CalibrationMethod, ConcatPart, QuantParams, QuantizedNetwork, Ranges, RequantizeIsa, add_scaled_u8, avg_pool_u8,
    concat_u8, max_pool_u8, zero_pad_u8,
};
use incept::microkernel::{Int8Isa, LANES};
use incept::models::{self, Model, ModelConfig};
use incept::ndarray::Array4;
use incept::ops::pool::{AvgPool2d, MaxPool2d};

/// A blocked u8 image of `c` channels on `[h, w]` and the real values it stands for, NCHW.
fn image(c: usize, [h, w]: [usize; 2], params: QuantParams, seed: u64) -> (Vec<u8>, Array4<f32>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bytes = vec![0u8; c.div_ceil(LANES) * h * w * LANES];
    let mut real = Array4::zeros([1, c, h, w]);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let q = rng.u8(..);
                bytes[((ch / LANES * h + y) * w + x) * LANES + ch % LANES] = q;
                real[[0, ch, y, x]] = params.dequantize(q);
            }
        }
    }
    (bytes, real)
}

/// The real value of channel `ch`, pixel `(y, x)` of a blocked u8 image on `[h, w]`.
fn real_at(bytes: &[u8], params: QuantParams, [h, w]: [usize; 2], ch: usize, y: usize, x: usize) -> f32 {
    params.dequantize(bytes[((ch / LANES * h + y) * w + x) * LANES + ch % LANES])
}

#[test]
fn max_pooling_bytes_is_max_pooling_their_values() {
    let params = QuantParams {
        scale: 0.07,
        zero_point: 31,
    };
    for (i, (pool, c, map)) in [
        (MaxPool2d::new([3, 3], [2, 2]).with_ceil_mode(true), 20, [13, 11]),
        (
            MaxPool2d::new([3, 3], [1, 1]).with_padding(Padding::symmetric(1, 1)),
            32,
            [7, 7],
        ),
        (MaxPool2d::new([2, 2], [2, 2]), 3, [8, 9]),
    ]
    .into_iter()
    .enumerate()
    {
        let (bytes, real) = image(c, map, params, i as u64);
        let g = pool.window.geometry("max", [1, c, map[0], map[1]]).unwrap();
        let (oh, ow) = (g.h.output, g.w.output);
        let mut y = vec![0u8; c.div_ceil(LANES) * oh * ow * LANES];
        max_pool_u8(&g, &bytes, &mut y);
        let (expected, _) = pool.forward(real.view()).unwrap();
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    assert_eq!(real_at(&y, params, [oh, ow], ch, oy, ox), expected[[0, ch, oy, ox]]);
                }
            }
        }
    }
}

#[test]
fn average_pooling_bytes_rounds_the_mean_of_their_values() {
    let params = QuantParams {
        scale: 0.05,
        zero_point: 100,
    };
    for (i, (pool, c, map)) in [
        (
            AvgPool2d::new([3, 3], [1, 1]).with_padding(Padding::symmetric(1, 1)),
            24,
            [9, 8],
        ),
        (
            AvgPool2d::new([3, 3], [1, 1])
                .with_padding(Padding::symmetric(1, 1))
                .with_count_include_pad(false),
            16,
            [5, 5],
        ),
        (AvgPool2d::new([5, 5], [3, 3]), 40, [14, 14]),
    ]
    .into_iter()
    .enumerate()
    {
        let (bytes, real) = image(c, map, params, 10 + i as u64);
        let g = pool.window.geometry("avg", [1, c, map[0], map[1]]).unwrap();
        let (oh, ow) = (g.h.output, g.w.output);
        let mut y = vec![0u8; c.div_ceil(LANES) * oh * ow * LANES];
        avg_pool_u8(&pool, &g, params, &bytes, &mut y);
        let expected = pool.forward(real.view()).unwrap();
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    // The nearest byte: half a step, plus float32's rounding of the real mean.
                    let error = (real_at(&y, params, [oh, ow], ch, oy, ox) - expected[[0, ch, oy, ox]]).abs();
                    assert!(error <= params.scale * 0.5 + 1e-5, "{i}: {ch},{oy},{ox}: {error}");
                }
            }
        }
    }
}

#[test]
fn concatenation_copies_or_requantizes_each_part() {
    let out = QuantParams {
        scale: 0.1,
        zero_point: 20,
    };
    let parts_params = [
        out,
        QuantParams {
            scale: 0.04,
            zero_point: 0,
        },
        out,
        QuantParams {
            scale: 0.3,
            zero_point: 200,
        },
    ];
    // Whole blocks in the output's parameters (copied), then another scale, then a part starting
    // mid-block, then a ragged last part.
    let channels = [32, 16, 8, 21];
    let map = [5, 6];
    let images: Vec<(Vec<u8>, Array4<f32>)> = channels
        .iter()
        .zip(&parts_params)
        .enumerate()
        .map(|(i, (&c, &p))| image(c, map, p, 20 + i as u64))
        .collect();
    let parts: Vec<ConcatPart<'_>> = images
        .iter()
        .zip(channels.iter().zip(&parts_params))
        .map(|((bytes, _), (&channels, &params))| ConcatPart {
            image: bytes,
            channels,
            params,
        })
        .collect();
    let total: usize = channels.iter().sum();
    let mut y = vec![0u8; total.div_ceil(LANES) * map[0] * map[1] * LANES];
    concat_u8(&parts, map, out, &mut y);
    let mut first = 0;
    for ((_, real), &c) in images.iter().zip(&channels) {
        for ch in 0..c {
            for yy in 0..map[0] {
                for x in 0..map[1] {
                    let want = real[[0, ch, yy, x]].clamp(out.dequantize(0), out.dequantize(255));
                    let error = (real_at(&y, out, map, first + ch, yy, x) - want).abs();
                    assert!(error <= out.scale * 0.5 + 1e-5, "channel {}: {error}", first + ch);
                }
            }
        }
        first += c;
    }
}

#[test]
fn zero_padding_bytes_pads_with_the_zero_point() {
    let params = QuantParams {
        scale: 0.1,
        zero_point: 57,
    };
    let (c, map) = (20, [4, 5]);
    let (bytes, real) = image(c, map, params, 30);
    let pads = incept::geometry::Pads {
        top: 1,
        bottom: 2,
        left: 3,
        right: 0,
    };
    let (oh, ow) = (7, 8);
    let mut y = vec![0u8; c.div_ceil(LANES) * oh * ow * LANES];
    zero_pad_u8(&bytes, c, map, pads, params.zero_point, &mut y);
    for ch in 0..c {
        for yy in 0..oh {
            for x in 0..ow {
                let inside = (1..5).contains(&yy) && (3..8).contains(&x);
                let want = if inside { real[[0, ch, yy - 1, x - 3]] } else { 0.0 };
                assert_eq!(real_at(&y, params, [oh, ow], ch, yy, x), want, "{ch},{yy},{x}");
            }
        }
    }
}

#[test]
fn a_scaled_residual_sum_of_bytes_rounds_the_sum_of_their_values() {
    let (pa, pb) = (
        QuantParams {
            scale: 0.05,
            zero_point: 120,
        },
        QuantParams {
            scale: 0.02,
            zero_point: 0,
        },
    );
    let out = QuantParams {
        scale: 0.06,
        zero_point: 100,
    };
    let (c, map) = (24, [3, 3]);
    let ((a, ra), (b, rb)) = (image(c, map, pa, 31), image(c, map, pb, 32));
    for relu in [false, true] {
        let mut y = vec![0u8; a.len()];
        add_scaled_u8((&a, pa), (&b, pb), 0.17, relu, out, &mut y);
        for ch in 0..c {
            for yy in 0..3 {
                for x in 0..3 {
                    let mut want = ra[[0, ch, yy, x]] + 0.17 * rb[[0, ch, yy, x]];
                    if relu {
                        want = want.max(0.0);
                    }
                    let want = want.clamp(out.dequantize(0), out.dequantize(255));
                    let error = (real_at(&y, out, map, ch, yy, x) - want).abs();
                    assert!(error <= out.scale * 0.5 + 1e-5, "{ch},{yy},{x}: {error}");
                }
            }
        }
    }
}

/// googlenet-d2l on 1×96×96 with seeded weights, calibrated on 4 random images; 3 more images.
fn d2l() -> (QuantizedNetwork, Vec<f32>) {
    let config = ModelConfig {
        in_channels: 1,
        size: [96, 96],
        classes: 10,
        aux_heads: false,
    };
    let model = Model::init(models::build("googlenet-d2l", config).unwrap(), 5);
    let per_image = 96 * 96;
    let mut rng = fastrand::Rng::with_seed(6);
    let calibration: Vec<f32> = (0..4 * per_image).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let mut executor = Executor::new(model.clone(), 4).unwrap();
    let ranges = Ranges::measure(&mut executor, &calibration, CalibrationMethod::MinMax).unwrap();
    let net = QuantizedNetwork::new(&model.graph, &model.params, &ranges).unwrap();
    let images = (0..3 * per_image).map(|_| rng.f32() * 2.0 - 1.0).collect();
    (net, images)
}

#[test]
fn every_build_and_every_batching_give_the_same_logits() {
    let (mut net, images) = d2l();
    let expected = net.forward(&images).unwrap();
    for isa in Int8Isa::ALL.into_iter().filter(|isa| isa.available()) {
        for requantize in [RequantizeIsa::Scalar, RequantizeIsa::Avx512]
            .into_iter()
            .filter(|r| r.available())
        {
            net.set_isa(isa, requantize);
            assert_eq!(net.forward(&images).unwrap(), expected, "{isa:?} {requantize:?}");
            // One image alone runs its convolutions' blocks across the pool.
            let one = net.forward(&images[96 * 96..2 * 96 * 96]).unwrap();
            assert_eq!(one, expected[10..20], "{isa:?} {requantize:?}, one image");
        }
    }
}

#[test]
fn a_batch_of_the_wrong_size_is_refused() {
    let (net, images) = d2l();
    let err = net.forward(&images[..100]).unwrap_err().to_string();
    assert!(err.contains("9216") && err.contains("100 values"), "{err}");
}

#[test]
fn percentile_calibration_clips_outliers_that_minmax_keeps() {
    let config = ModelConfig {
        in_channels: 1,
        size: [32, 32],
        classes: 10,
        aux_heads: false,
    };
    let model = Model::init(models::build("googlenet-d2l", config).unwrap(), 5);
    let mut rng = fastrand::Rng::with_seed(8);
    // The input node's values: uniform in [0, 1), and 3 outliers of 100 among 4096.
    let mut images: Vec<f32> = (0..4 * 1024).map(|_| rng.f32()).collect();
    for i in 0..3 {
        images[i * 800] = 100.0;
    }
    let mut executor = Executor::new(model, 4).unwrap();
    let minmax = Ranges::measure(&mut executor, &images, CalibrationMethod::MinMax).unwrap();
    let (_, top) = minmax.get(0).unwrap();
    assert_eq!(top, 100.0);
    // 99.9%: up to 4 values may lie outside the range on each side, so the 3 outliers do; the range ends
    // at the first edge of the 2048 bins of [min, 100) above the other values.
    let clipped = Ranges::measure(&mut executor, &images, CalibrationMethod::Percentile(99.9)).unwrap();
    let (low, high) = clipped.get(0).unwrap();
    assert_eq!(
        low,
        minmax.get(0).unwrap().0,
        "the lowest bin holds far more than 0.1%: not clipped"
    );
    assert!((1.0..=1.0 + 100.0 / 2048.0).contains(&high), "{high}");
    let clipped = Ranges::measure(&mut executor, &images, CalibrationMethod::Percentile(99.99)).unwrap();
    assert_eq!(
        clipped.get(0).unwrap().1,
        100.0,
        "0.01% of 4096 is less than one value: nothing clipped"
    );
}
