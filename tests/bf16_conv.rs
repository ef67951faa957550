//! Direct convolutions in bf16, forward and both gradients, on every bf16 build this CPU runs, against
//! the float64 naive convolution of the same operands rounded to bf16: each output within the rounding
//! bound of a float32 sum of its terms. That bound is about 1e-6 of the terms' magnitudes, far below
//! bf16's own step (2^-8 = 4e-3): it holds only if the kernels read exactly the bf16 values of the
//! operands (rounded to nearest even) and sum every product in float32.
//!
//! And against PyTorch: per convolution kind of the eight models, incept's bf16 result (the plan's
//! bf16 build, the executor's blocked layout) no further from float64 than twice PyTorch's
//! `torch.autocast` bf16 result is (`fixtures/generate_bf16_layers.py` measures PyTorch's distance on
//! operands both sides compute by formula).

mod common;

use common::fixture::Fixture;
use common::splitmix_uniform;
use incept::Padding;
use incept::bf16;
use incept::blocked::{self, Halo, Layout};
use incept::microkernel::{Bf16Isa, Isa};
use incept::ndarray::Array4;
use incept::ops::conv::direct::{self, DirectWeights};
use incept::ops::conv::{Conv2d, ConvAlgo};
use incept::tensor::{Images, ImagesMut};
use incept::workspace::Workspace;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::round(x)).collect()
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// The convolution kinds of the eight models (odd channel counts too), each with an input `[n, c, h, w]`.
fn cases() -> Vec<(&'static str, Conv2d, [usize; 4])> {
    vec![
        ("1x1, 40->70", Conv2d::new(40, 70, [1, 1]), [2, 40, 5, 3]),
        // Rows of more than 16 pixels: the AMX tile program's second group of pixels.
        (
            "3x3 pad 1 on 21-pixel rows, 32->40",
            Conv2d::new(32, 40, [3, 3]).with_padding(Padding::symmetric(1, 1)),
            [1, 32, 3, 21],
        ),
        (
            "3x3 pad 1, 64->96",
            Conv2d::new(64, 96, [3, 3]).with_padding(Padding::symmetric(1, 1)),
            [2, 64, 7, 7],
        ),
        (
            "5x5 pad 2, 16->32",
            Conv2d::new(16, 32, [5, 5]).with_padding(Padding::symmetric(2, 2)),
            [1, 16, 9, 10],
        ),
        (
            "3x3/2 valid, 33->18",
            Conv2d::new(33, 18, [3, 3]).with_stride([2, 2]),
            [2, 33, 11, 10],
        ),
        (
            "1x7 pad 3, 20->20",
            Conv2d::new(20, 20, [1, 7]).with_padding(Padding::explicit(0, 0, 3, 3)),
            [1, 20, 5, 9],
        ),
        (
            "7x1 pad 3, 20->12",
            Conv2d::new(20, 12, [7, 1]).with_padding(Padding::explicit(3, 3, 0, 0)),
            [1, 20, 9, 5],
        ),
        // A one-pixel map (inception-v3's last blocks at 75x75): one row, which is not a whole map.
        (
            "1x3 pad (0, 1) on a 1x1 map, 24->24",
            Conv2d::new(24, 24, [1, 3]).with_padding(Padding::explicit(0, 0, 1, 1)),
            [2, 24, 1, 1],
        ),
        (
            "3x1 pad (1, 0) on a 1x1 map, 24->24",
            Conv2d::new(24, 24, [3, 1]).with_padding(Padding::explicit(1, 1, 0, 0)),
            [2, 24, 1, 1],
        ),
        (
            "1x3 pad 1, 24->24 (inception-v3's split)",
            Conv2d::new(24, 24, [1, 3]).with_padding(Padding::explicit(0, 0, 1, 1)),
            [1, 24, 4, 4],
        ),
    ]
}

/// Asserts `found` is within `gamma · magnitude + u·|exact|` of `exact`.
fn assert_within(what: &str, found: &[f32], exact: &[f32], magnitude: &[f32], terms: usize) {
    let u = f64::from(f32::EPSILON) / 2.0;
    let gamma = terms as f64 * u / (1.0 - terms as f64 * u);
    assert_eq!(found.len(), exact.len(), "{what}");
    for (i, ((&f, &e), &m)) in found.iter().zip(exact).zip(magnitude).enumerate() {
        let bound = gamma * f64::from(m) + f64::from(e).abs() * u;
        let error = (f64::from(f) - f64::from(e)).abs();
        assert!(
            error <= bound,
            "{what}: value {i} is {f}, float64 of the bf16 operands gives {e} (bound {bound:.2e})"
        );
    }
}

#[test]
fn bf16_convolutions_sum_the_bf16_operands_in_float32() {
    let builds: Vec<Bf16Isa> = Bf16Isa::ALL
        .into_iter()
        .filter(|i| i.available())
        .chain([Bf16Isa::AmxModel])
        .collect();
    println!("bf16 builds run on this CPU (the last on the tile model): {builds:?}");
    incept::kernels::flush_denormals_on_this_thread();
    for (name, conv, input) in cases() {
        let naive = conv.with_algo(ConvAlgo::Naive);
        let g = naive.geometry(input).unwrap();
        let [n, c, h, w] = input;
        let (in_len, out_len) = (c * h * w, g.out_channels * g.h.output * g.w.output);
        let x = values(n * in_len, 1);
        let wt = values(naive.weight_shape().iter().product(), 2);
        let dy = values(n * out_len, 3);
        let x4 = |v: &[f32]| Array4::from_shape_vec(input, v.to_vec()).unwrap();
        let w4 = |v: &[f32]| Array4::from_shape_vec(naive.weight_shape(), v.to_vec()).unwrap();
        let y4 = |v: &[f32]| Array4::from_shape_vec([n, g.out_channels, g.h.output, g.w.output], v.to_vec()).unwrap();
        let (xr, wr, dyr) = (rounded(&x), rounded(&wt), rounded(&dy));
        // float64 references on the rounded operands and, for the bounds, on their magnitudes.
        let forward = |x: &[f32], w: &[f32]| {
            naive
                .forward(x4(x).view(), w4(w).view(), None)
                .unwrap()
                .into_raw_vec_and_offset()
                .0
        };
        let input_grad = |w: &[f32], dy: &[f32]| {
            naive
                .backward_input(w4(w).view(), y4(dy).view(), input)
                .unwrap()
                .into_raw_vec_and_offset()
                .0
        };
        let weight_grad = |x: &[f32], dy: &[f32]| {
            let mut dw = Array4::zeros(naive.weight_shape());
            naive
                .backward_weight(x4(x).view(), y4(dy).view(), dw.view_mut())
                .unwrap();
            dw.into_raw_vec_and_offset().0
        };
        let taps = g.h.kernel * g.w.kernel;
        let (map_in, map_out) = ([h, w], [g.h.output, g.w.output]);
        let blocked_in = |v: &[f32]| blocked::batch_from_nchw(v, c, map_in, Halo::default());
        let blocked_out = |v: &[f32]| blocked::batch_from_nchw(v, g.out_channels, map_out, Halo::default());
        for &isa in &builds {
            let weights = DirectWeights::with_precision(&g, &wt, None, Some(isa));
            assert_eq!(weights.bf16_isa(), Some(isa), "{name}");
            let mut ws = Workspace::default();
            let f32_isa = Isa::best();
            // The executor's activations are blocked; the ndarray API's NCHW.
            for layout in [Layout::Blocked, Layout::Nchw] {
                let (x_in, dy_in) = match layout {
                    Layout::Blocked => (blocked_in(&x), blocked_out(&dy)),
                    Layout::Nchw => (x.clone(), dy.clone()),
                };
                let (in_len, out_len) = (x_in.len() / n, dy_in.len() / n);
                let to_nchw_in = |v: Vec<f32>| match layout {
                    Layout::Blocked => blocked::batch_to_nchw(&v, c, map_in),
                    Layout::Nchw => v,
                };
                let to_nchw_out = |v: Vec<f32>| match layout {
                    Layout::Blocked => blocked::batch_to_nchw(&v, g.out_channels, map_out),
                    Layout::Nchw => v,
                };

                let mut y = vec![f32::NAN; n * out_len];
                let mut y_images = ImagesMut::dense(&mut y, n, out_len);
                let x_images = Images::dense(&x_in, n, in_len);
                direct::forward_images(
                    &weights,
                    x_images,
                    layout,
                    false,
                    &mut y_images,
                    layout,
                    &mut ws,
                    f32_isa,
                );
                let what = format!("{name}, {isa:?}, {layout:?}, forward");
                let y = to_nchw_out(y);
                assert_within(&what, &y, &forward(&xr, &wr), &forward(&abs(&xr), &abs(&wr)), c * taps);

                let mut dx = vec![0.0; n * in_len];
                let dy_images = Images::dense(&dy_in, n, out_len);
                let mut dx_images = ImagesMut::dense(&mut dx, n, in_len);
                if weights.has_direct_input_grad() {
                    direct::add_input_grad_images(
                        &weights,
                        dy_images,
                        layout,
                        &mut dx_images,
                        layout,
                        &mut ws,
                        f32_isa,
                    );
                } else {
                    direct::add_input_grad_via_im2col(
                        &g,
                        &wt,
                        dy_images,
                        layout,
                        &mut dx_images,
                        layout,
                        &mut ws,
                        true,
                    );
                }
                let what = format!("{name}, {isa:?}, {layout:?}, input gradient");
                let exact = input_grad(&wr, &dyr);
                let dx = to_nchw_in(dx);
                assert_within(
                    &what,
                    &dx,
                    &exact,
                    &input_grad(&abs(&wr), &abs(&dyr)),
                    g.out_channels * taps,
                );

                let mut dw = vec![0.0; wt.len()];
                direct::add_weight_grad_images(
                    &weights, x_images, layout, dy_images, layout, &mut dw, &mut ws, f32_isa,
                );
                let what = format!("{name}, {isa:?}, {layout:?}, weight gradient");
                let pixels = n * g.h.output * g.w.output;
                assert_within(
                    &what,
                    &dw,
                    &weight_grad(&xr, &dyr),
                    &weight_grad(&abs(&xr), &abs(&dyr)),
                    pixels,
                );
            }
        }
    }
}

/// `max|found - exact| / max|exact|`.
fn distance(found: &[f32], exact: &[f32]) -> f64 {
    let largest = exact.iter().fold(0f64, |m, &e| m.max(f64::from(e).abs()));
    let worst = found
        .iter()
        .zip(exact)
        .fold(0f64, |m, (&f, &e)| m.max((f64::from(f) - f64::from(e)).abs()));
    worst / largest
}

#[test]
fn bf16_convolutions_are_within_twice_pytorch_bf16_distance_from_float64() {
    let fixture = Fixture::open("bf16_layers");
    let isa = Bf16Isa::best();
    println!("bf16 build: {isa:?}");
    for case in fixture
        .cases()
        .into_iter()
        .filter(|c| fixture.metadata(c).contains("index="))
    {
        let index = fixture.usizes(&case, "index")[0];
        let [cin, cout] = [fixture.usizes(&case, "in")[0], fixture.usizes(&case, "out")[0]];
        let kernel = fixture.pair(&case, "kernel");
        let stride = fixture.usizes(&case, "stride")[0];
        let [ph, pw] = fixture.pair(&case, "pad");
        let input: [usize; 4] = fixture.usizes(&case, "input").try_into().unwrap();
        let conv = Conv2d::new(cin, cout, kernel)
            .with_stride([stride, stride])
            .with_padding(Padding::explicit(ph, ph, pw, pw));
        let naive = conv.with_algo(ConvAlgo::Naive);
        let g = naive.geometry(input).unwrap();
        let [n, c, h, w] = input;
        let map_out = [g.h.output, g.w.output];
        // The fixture's formula: tensor numbers 3k, 3k + 1, 3k + 2 of splitmix64.
        let uniform = |p: usize, len: usize, scale: f64| -> Vec<f32> {
            splitmix_uniform(3 * index + p, len)
                .map(|u| ((2.0 * u - 1.0) * scale) as f32)
                .collect()
        };
        let x = uniform(0, n * c * h * w, 1.0);
        let wt = uniform(
            1,
            cout * cin * kernel[0] * kernel[1],
            (6.0 / (cin * kernel[0] * kernel[1]) as f64).sqrt(),
        );
        let dy = uniform(2, n * cout * map_out[0] * map_out[1], 1.0);
        let x4 = Array4::from_shape_vec(input, x.clone()).unwrap();
        let w4 = Array4::from_shape_vec(naive.weight_shape(), wt.clone()).unwrap();
        let dy4 = Array4::from_shape_vec([n, cout, map_out[0], map_out[1]], dy.clone()).unwrap();
        let exact_y = naive
            .forward(x4.view(), w4.view(), None)
            .unwrap()
            .into_raw_vec_and_offset()
            .0;
        let exact_dx = naive
            .backward_input(w4.view(), dy4.view(), input)
            .unwrap()
            .into_raw_vec_and_offset()
            .0;
        let mut exact_dw = Array4::zeros(naive.weight_shape());
        naive
            .backward_weight(x4.view(), dy4.view(), exact_dw.view_mut())
            .unwrap();
        let exact_dw = exact_dw.into_raw_vec_and_offset().0;

        // As the executor runs it: blocked activations, except the few-channel first layer's NCHW input.
        let weights = DirectWeights::with_precision(&g, &wt, None, Some(isa));
        let (x_layout, y_layout) = if c < 16 {
            (Layout::Nchw, Layout::Nchw)
        } else {
            (Layout::Blocked, Layout::Blocked)
        };
        let to = |v: &[f32], channels: usize, map: [usize; 2], layout: Layout| match layout {
            Layout::Blocked => blocked::batch_from_nchw(v, channels, map, Halo::default()),
            Layout::Nchw => v.to_vec(),
        };
        let back = |v: Vec<f32>, channels: usize, map: [usize; 2], layout: Layout| match layout {
            Layout::Blocked => blocked::batch_to_nchw(&v, channels, map),
            Layout::Nchw => v,
        };
        let (xb, dyb) = (to(&x, c, [h, w], x_layout), to(&dy, cout, map_out, y_layout));
        let (in_len, out_len) = (xb.len() / n, dyb.len() / n);
        let mut ws = Workspace::default();
        let f32_isa = Isa::best();
        let mut y = vec![0.0; n * out_len];
        let x_images = Images::dense(&xb, n, in_len);
        direct::forward_images(
            &weights,
            x_images,
            x_layout,
            false,
            &mut ImagesMut::dense(&mut y, n, out_len),
            y_layout,
            &mut ws,
            f32_isa,
        );
        let mut dx = vec![0.0; n * in_len];
        let dy_images = Images::dense(&dyb, n, out_len);
        let mut dx_images = ImagesMut::dense(&mut dx, n, in_len);
        if weights.has_direct_input_grad() {
            direct::add_input_grad_images(
                &weights,
                dy_images,
                y_layout,
                &mut dx_images,
                x_layout,
                &mut ws,
                f32_isa,
            );
        } else {
            let bf16 = weights.bf16_isa().is_some();
            direct::add_input_grad_via_im2col(&g, &wt, dy_images, y_layout, &mut dx_images, x_layout, &mut ws, bf16);
        }
        let mut dw = vec![0.0; wt.len()];
        direct::add_weight_grad_images(
            &weights, x_images, x_layout, dy_images, y_layout, &mut dw, &mut ws, f32_isa,
        );
        let ours = [
            distance(&back(y, cout, map_out, y_layout), &exact_y),
            distance(&back(dx, c, [h, w], x_layout), &exact_dx),
            distance(&dw, &exact_dw),
        ];
        let torch = fixture.named_f64(&format!("{case}/torch_bf16"));
        for (k, part) in ["forward", "input gradient", "weight gradient"].iter().enumerate() {
            println!(
                "{case} {part}: incept bf16 {:.2e}, PyTorch bf16 {:.2e} from float64",
                ours[k], torch[k]
            );
            assert!(
                ours[k] <= 2.0 * torch[k],
                "{case} {part}: incept's bf16 result is {:.2e} from float64, more than twice PyTorch bf16's {:.2e}",
                ours[k],
                torch[k]
            );
        }
    }
}
