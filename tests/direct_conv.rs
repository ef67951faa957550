//! Direct convolution on the blocked layout with incept's microkernel, against the float64 naive
//! convolution, on every microkernel build this CPU runs: odd channel counts (the padding to 16 must
//! never reach a result), strides, dilation, asymmetric and TF `SAME` padding, 1×k / k×1, 1×1 and 7×7.
//! Each output must lie within the worst-case rounding bound of a float32 sum of its terms, computed
//! from the same naive convolution run on the terms' magnitudes.

use incept::Padding;
use incept::blocked::{self, Halo};
use incept::microkernel::Isa;
use incept::ndarray::{Array1, Array4};
use incept::ops::conv::direct::{self, PackedConv};
use incept::ops::conv::{Conv2d, ConvAlgo};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

/// The cases: conv, input `[n, c, h, w]`.
fn cases() -> Vec<(&'static str, Conv2d, [usize; 4])> {
    vec![
        (
            "3x3 pad 1, 3->5",
            Conv2d::new(3, 5, [3, 3]).with_padding(Padding::symmetric(1, 1)),
            [2, 3, 7, 9],
        ),
        (
            "3x3 pad 1, 19->33",
            Conv2d::new(19, 33, [3, 3]).with_padding(Padding::symmetric(1, 1)),
            [2, 19, 6, 6],
        ),
        (
            "3x3 pad 1, 64->96",
            Conv2d::new(64, 96, [3, 3]).with_padding(Padding::symmetric(1, 1)),
            [1, 64, 12, 12],
        ),
        ("1x1, 40->70", Conv2d::new(40, 70, [1, 1]), [2, 40, 5, 3]),
        (
            "5x5 pad 2, 16->32",
            Conv2d::new(16, 32, [5, 5]).with_padding(Padding::symmetric(2, 2)),
            [1, 16, 9, 10],
        ),
        (
            "7x7/2 pad 3, 1->64 (the stem)",
            Conv2d::new(1, 64, [7, 7])
                .with_stride([2, 2])
                .with_padding(Padding::symmetric(3, 3)),
            [2, 1, 20, 21],
        ),
        (
            "3x3/2 valid, 17->18",
            Conv2d::new(17, 18, [3, 3]).with_stride([2, 2]),
            [1, 17, 11, 10],
        ),
        (
            "3x3 asymmetric pads, 8->24",
            Conv2d::new(8, 24, [3, 3]).with_padding(Padding::explicit(0, 2, 1, 0)),
            [1, 8, 7, 8],
        ),
        (
            "3x3/2 SAME, 5->7",
            Conv2d::new(5, 7, [3, 3])
                .with_stride([2, 2])
                .with_padding(Padding::Same),
            [1, 5, 8, 8],
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
        (
            "3x3 dilation 2 pad 2, 6->9",
            Conv2d::new(6, 9, [3, 3])
                .with_dilation([2, 2])
                .with_padding(Padding::symmetric(2, 2)),
            [1, 6, 9, 9],
        ),
    ]
}

#[test]
fn direct_blocked_convolution_matches_float64_within_the_rounding_bound() {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
    for (name, conv, input) in cases() {
        let conv = conv.with_algo(ConvAlgo::Naive);
        let g = conv.geometry(input).unwrap();
        let [n, c, h, w] = input;
        let x = values(n * c * h * w, 1);
        let wt = values(conv.weight_shape().iter().product(), 2);
        let b = values(g.out_channels, 3);
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
        let naive = |x: &[f32], w: &[f32], b: &[f32]| {
            let x = Array4::from_shape_vec(input, x.to_vec()).unwrap();
            let w = Array4::from_shape_vec(conv.weight_shape(), w.to_vec()).unwrap();
            let b = Array1::from_vec(b.to_vec());
            conv.forward(x.view(), w.view(), Some(b.view())).unwrap()
        };
        let exact = naive(&x, &wt, &b);
        let magnitude = naive(&abs(&x), &abs(&wt), &abs(&b));
        let terms = c * g.h.kernel * g.w.kernel + 2;
        let u = f32::EPSILON as f64 / 2.0;
        let gamma = terms as f64 * u / (1.0 - terms as f64 * u);

        let packed = PackedConv::new(&g, &wt, Some(&b));
        let halo = direct::halo(&g);
        let xb = blocked::batch_from_nchw(&x, c, [h, w], halo);
        let (oh, ow) = (g.h.output, g.w.output);
        let out_len = blocked::image_len(g.out_channels, [oh, ow], Halo::default());
        for &isa in &isas {
            for relu in [false, true] {
                let mut yb = vec![f32::NAN; n * out_len];
                direct::forward_blocked(&packed, &xb, &mut yb, false, relu, isa);
                let y = blocked::batch_to_nchw(&yb, g.out_channels, [oh, ow]);
                // The padding channels of the output stay exactly zero (weights and bias are zero there).
                for img in yb.chunks_exact(out_len) {
                    assert!(
                        img[..].iter().enumerate().all(|(i, &v)| {
                            let channel = (i / (oh * ow * 16)) * 16 + i % 16;
                            channel < g.out_channels || v == 0.0
                        }),
                        "{name} {isa:?}: a padding channel is not zero"
                    );
                }
                for (i, ((&ours, &e), &m)) in y.iter().zip(exact.iter()).zip(magnitude.iter()).enumerate() {
                    let e = if relu { e.max(0.0) } else { e } as f64;
                    // The naive reference itself rounds once to float32 at the end: allow that too.
                    let bound = gamma * m as f64 + (e.abs() * u);
                    assert!(
                        (ours as f64 - e).abs() <= bound,
                        "{name} {isa:?} relu {relu}: output {i} is {ours}, float64 gives {e} (bound {bound:.2e})"
                    );
                }
            }
        }
    }
}

#[test]
fn repacking_new_weights_changes_the_output_as_packing_them_fresh_does() {
    let conv = Conv2d::new(20, 40, [3, 3]).with_padding(Padding::symmetric(1, 1));
    let g = conv.geometry([1, 20, 6, 6]).unwrap();
    let (w1, w2) = (values(40 * 20 * 9, 4), values(40 * 20 * 9, 5));
    let x = values(20 * 36, 6);
    let halo = direct::halo(&g);
    let xb = blocked::batch_from_nchw(&x, 20, [6, 6], halo);
    let run = |p: &PackedConv| {
        let mut y = vec![0.0; blocked::image_len(40, [6, 6], Halo::default())];
        direct::forward_blocked(p, &xb, &mut y, false, false, Isa::best());
        y
    };
    let mut packed = PackedConv::new(&g, &w1, None);
    let before = run(&packed);
    packed.repack(&w2, None);
    assert_eq!(run(&packed), run(&PackedConv::new(&g, &w2, None)));
    assert_ne!(run(&packed), before);
}

/// The input gradient of every stride-1 case as the direct convolution of the output gradient with the
/// flipped, transposed weights, added onto an existing gradient (as the executor sums the gradients of
/// an input that feeds several branches), against the float64 naive input gradient.
#[test]
fn the_input_gradient_of_stride_1_convolutions_matches_float64_within_the_rounding_bound() {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
    let mut checked = 0;
    for (name, conv, input) in cases() {
        let conv = conv.with_algo(ConvAlgo::Naive);
        let g = conv.geometry(input).unwrap();
        let wt = values(conv.weight_shape().iter().product(), 7);
        let Some(back) = PackedConv::input_grad(&g, &wt) else {
            assert!(
                g.h.stride > 1 || g.w.stride > 1,
                "{name}: stride 1 but no input-gradient packing"
            );
            continue;
        };
        checked += 1;
        let [n, c, h, w] = input;
        let [oh, ow] = [g.h.output, g.w.output];
        let dy = values(n * g.out_channels * oh * ow, 8);
        let dx0 = values(n * c * h * w, 9);
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
        let naive = |w: &[f32], dy: &[f32]| {
            let w = Array4::from_shape_vec(conv.weight_shape(), w.to_vec()).unwrap();
            let dy = Array4::from_shape_vec([n, g.out_channels, oh, ow], dy.to_vec()).unwrap();
            conv.backward_input(w.view(), dy.view(), input).unwrap()
        };
        let (exact, magnitude) = (naive(&wt, &dy), naive(&abs(&wt), &abs(&dy)));
        let terms = g.out_channels * g.h.kernel * g.w.kernel + 2;
        let u = f32::EPSILON as f64 / 2.0;
        let gamma = terms as f64 * u / (1.0 - terms as f64 * u);

        let bg = *back.geometry();
        let halo = direct::halo(&bg);
        let dyb = blocked::batch_from_nchw(&dy, g.out_channels, [oh, ow], halo);
        for &isa in &isas {
            let mut dxb = blocked::batch_from_nchw(&dx0, c, [h, w], Halo::default());
            direct::forward_blocked(&back, &dyb, &mut dxb, true, false, isa);
            let dx = blocked::batch_to_nchw(&dxb, c, [h, w]);
            for (i, (((&ours, &e), &m), &d0)) in dx.iter().zip(exact.iter()).zip(magnitude.iter()).zip(&dx0).enumerate()
            {
                let e = e as f64 + d0 as f64;
                let bound = gamma * (m as f64 + d0.abs() as f64) + e.abs() * u;
                assert!(
                    (ours as f64 - e).abs() <= bound,
                    "{name} {isa:?}: input gradient {i} is {ours}, float64 gives {e} (bound {bound:.2e})"
                );
            }
        }
    }
    assert!(checked >= 8, "only {checked} stride-1 cases");
}

/// The weight gradient with the pixels as the reduction, added onto an existing gradient, against the
/// float64 naive weight gradient; and the same bits at 1, 2 and 3 threads.
#[test]
fn the_weight_gradient_matches_float64_and_does_not_depend_on_the_thread_count() {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
    for (name, conv, input) in cases() {
        let conv = conv.with_algo(ConvAlgo::Naive);
        let g = conv.geometry(input).unwrap();
        let [n, c, h, w] = input;
        let [oh, ow] = [g.h.output, g.w.output];
        let x = values(n * c * h * w, 10);
        let dy = values(n * g.out_channels * oh * ow, 11);
        let wlen: usize = conv.weight_shape().iter().product();
        let dw0 = values(wlen, 12);
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
        let naive = |x: &[f32], dy: &[f32]| {
            let x = Array4::from_shape_vec(input, x.to_vec()).unwrap();
            let dy = Array4::from_shape_vec([n, g.out_channels, oh, ow], dy.to_vec()).unwrap();
            let mut dw = Array4::<f32>::zeros(conv.weight_shape());
            conv.backward_weight(x.view(), dy.view(), dw.view_mut()).unwrap();
            dw.into_raw_vec_and_offset().0
        };
        let (exact, magnitude) = (naive(&x, &dy), naive(&abs(&x), &abs(&dy)));
        let terms = n * oh * ow + 2;
        let u = f32::EPSILON as f64 / 2.0;
        let gamma = terms as f64 * u / (1.0 - terms as f64 * u);

        let packed = PackedConv::new(&g, &dw0, None);
        let halo = direct::halo(&g);
        let xb = blocked::batch_from_nchw(&x, c, [h, w], halo);
        let dyb = blocked::batch_from_nchw(&dy, g.out_channels, [oh, ow], Halo::default());
        // The existing gradient, packed the way the weights are.
        let start = PackedConv::new(&g, &dw0, None);
        let mut bits: Option<Vec<u32>> = None;
        for &isa in &isas {
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut dwb = start.packed_weights().to_vec();
                pool.install(|| packed.add_weight_grad_blocked(&xb, &dyb, &mut dwb, isa));
                let ours = packed.unpack(&dwb);
                for (i, (((&o, &e), &m), &d0)) in ours.iter().zip(&exact).zip(&magnitude).zip(&dw0).enumerate() {
                    let e = e as f64 + d0 as f64;
                    let bound = gamma * (m as f64 + d0.abs() as f64) + e.abs() * u;
                    assert!(
                        (o as f64 - e).abs() <= bound,
                        "{name} {isa:?} {threads} threads: weight gradient {i} is {o}, float64 gives {e} (bound {bound:.2e})"
                    );
                }
                let these: Vec<u32> = dwb.iter().map(|v| v.to_bits()).collect();
                match &bits {
                    None => bits = Some(these),
                    Some(first) => assert!(*first == these, "{name} {isa:?} {threads} threads: other bits"),
                }
            }
        }
    }
}
