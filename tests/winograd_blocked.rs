//! Winograd F(2×2, 3×3) and F(4×4, 3×3) on the blocked layout (`ops::conv::winograd_blocked`) against
//! the float64 naive convolution, on every microkernel build this CPU runs, at the channel counts and
//! map sizes of every 3×3 layer of googlenet-d2l (at 96×96) and at odd ones (channel counts off the
//! 16-lane blocks, asymmetric and zero padding, maps that are not whole tiles), with the ReLU and
//! without, over batches whose tile blocks span images.
//!
//! The bar, per layer: the largest error over the largest float64 output at most 1e-5 for F(4,3), the
//! issue's bound (measured up to 4.3e-6 with the points 0, ±1, 1/2, -2; 9.9e-6 with the usual 0, ±1,
//! ±2), and 1e-6 for F(2,3) (measured up to 5.1e-7), the bar that catches a bias off by 1e-4
//! (`WINOGRAD_ERRORS=1 ... --nocapture` prints each layer's).

use incept::Padding;
use incept::blocked::{self, Halo};
use incept::microkernel::Isa;
use incept::ndarray::{Array1, Array4};
use incept::ops::conv::winograd_blocked::WinogradWeights;
use incept::ops::conv::{Conv2d, ConvAlgo};
use incept::tensor::{Images, ImagesMut};
use incept::workspace::Workspace;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

/// googlenet-d2l's 3×3 convolutions at 96×96: (input channels, output channels, map).
const GOOGLENET_D2L: [(usize, usize, usize); 11] = [
    (64, 192, 24),
    (96, 128, 12),
    (128, 192, 12),
    (96, 208, 6),
    (112, 224, 6),
    (128, 256, 6),
    (144, 288, 6),
    (160, 320, 6),
    (160, 320, 3),
    (192, 384, 3),
    (32, 64, 24),
];

fn cases() -> Vec<(String, Conv2d, [usize; 4])> {
    let mut cases: Vec<(String, Conv2d, [usize; 4])> = GOOGLENET_D2L
        .iter()
        .map(|&(c, o, map)| {
            let conv = Conv2d::new(c, o, [3, 3]).with_padding(Padding::symmetric(1, 1));
            (format!("googlenet-d2l {c}->{o} @{map}"), conv, [3, c, map, map])
        })
        .collect();
    cases.push((
        "3->5 pad 1, 7x9".into(),
        Conv2d::new(3, 5, [3, 3]).with_padding(Padding::symmetric(1, 1)),
        [2, 3, 7, 9],
    ));
    cases.push(("19->33 valid, 9x6".into(), Conv2d::new(19, 33, [3, 3]), [2, 19, 9, 6]));
    cases.push((
        "8->24 pads (0, 2, 1, 0)".into(),
        Conv2d::new(8, 24, [3, 3]).with_padding(Padding::explicit(0, 2, 1, 0)),
        [1, 8, 7, 8],
    ));
    // googlenet-d2l's last blocks at 32x32: maps of 2x2 and 1x1 (one tile an image).
    for (c, o, map) in [(96, 208, 2), (160, 320, 1)] {
        let conv = Conv2d::new(c, o, [3, 3]).with_padding(Padding::symmetric(1, 1));
        cases.push((format!("{c}->{o} @{map}"), conv, [5, c, map, map]));
    }
    cases.push((
        "20->17 pad 2, 5x5".into(),
        Conv2d::new(20, 17, [3, 3]).with_padding(Padding::symmetric(2, 2)),
        [2, 20, 5, 5],
    ));
    cases
}

#[test]
fn winograd_blocked_matches_float64() {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
    let mut largest = [0f64; 5];
    for (name, conv, input) in cases() {
        let conv = conv.with_algo(ConvAlgo::Naive);
        let g = conv.geometry(input).unwrap();
        let [n, c, h, w] = input;
        let x = values(n * c * h * w, 1);
        let wt: Vec<f32> = values(conv.weight_shape().iter().product(), 2);
        let b = values(g.out_channels, 3);
        let exact = {
            let x = Array4::from_shape_vec(input, x.clone()).unwrap();
            let w = Array4::from_shape_vec(conv.weight_shape(), wt.clone()).unwrap();
            let b = Array1::from_vec(b.clone());
            conv.forward(x.view(), w.view(), Some(b.view())).unwrap()
        };
        let xb = blocked::batch_from_nchw(&x, c, [h, w], Halo::default());
        let (oh, ow) = (g.h.output, g.w.output);
        let in_len = blocked::image_len(c, [h, w], Halo::default());
        let out_len = blocked::image_len(g.out_channels, [oh, ow], Halo::default());
        for tile in [2, 4] {
            let packed = WinogradWeights::new(&g, tile, &wt, Some(&b));
            for &isa in &isas {
                for relu in [false, true] {
                    let mut yb = vec![f32::NAN; n * out_len];
                    let mut ws = Workspace::default();
                    let mut out = ImagesMut::dense(&mut yb, n, out_len);
                    packed.forward_images(Images::dense(&xb, n, in_len), relu, &mut out, &mut ws, isa);
                    for img in yb.chunks_exact(out_len) {
                        let padding_zero = img.iter().enumerate().all(|(i, &v)| {
                            let channel = (i / (oh * ow * 16)) * 16 + i % 16;
                            channel < g.out_channels || v == 0.0
                        });
                        assert!(
                            padding_zero,
                            "{name} F({tile},3) {isa:?}: a padding channel is not zero"
                        );
                    }
                    let y = blocked::batch_to_nchw(&yb, g.out_channels, [oh, ow]);
                    let scale = exact.iter().fold(0f64, |m, &e| m.max(f64::from(e).abs()));
                    let worst = y.iter().zip(exact.iter()).fold(0f64, |m, (&ours, &e)| {
                        let e = if relu { e.max(0.0) } else { e };
                        m.max((f64::from(ours) - f64::from(e)).abs())
                    });
                    largest[tile] = largest[tile].max(worst / scale);
                    if std::env::var_os("WINOGRAD_ERRORS").is_some() && relu && isa == Isa::best() {
                        eprintln!("{name} F({tile},3): {:.2e}", worst / scale);
                    }
                    let bar = if tile == 4 { 1e-5 } else { 1e-6 };
                    assert!(
                        worst / scale <= bar,
                        "{name} F({tile},3) {isa:?} relu {relu}: {:.2e} relative to float64",
                        worst / scale
                    );
                }
            }
        }
    }
    eprintln!(
        "largest error relative to float64: F(2,3) {:.2e}, F(4,3) {:.2e}",
        largest[2], largest[4]
    );
}

#[test]
fn repacking_new_weights_matches_packing_them_fresh() {
    let conv = Conv2d::new(20, 40, [3, 3]).with_padding(Padding::symmetric(1, 1));
    let g = conv.geometry([1, 20, 6, 6]).unwrap();
    let (w1, w2) = (values(40 * 20 * 9, 4), values(40 * 20 * 9, 5));
    let x = values(20 * 36, 6);
    let xb = blocked::batch_from_nchw(&x, 20, [6, 6], Halo::default());
    let run = |p: &WinogradWeights| {
        let mut y = vec![0.0; blocked::image_len(40, [6, 6], Halo::default())];
        let len = y.len();
        p.forward_images(
            Images::dense(&xb, 1, xb.len()),
            false,
            &mut ImagesMut::dense(&mut y, 1, len),
            &mut Workspace::default(),
            Isa::best(),
        );
        y
    };
    let mut packed = WinogradWeights::new(&g, 4, &w1, None);
    let before = run(&packed);
    packed.repack(&w2, None);
    assert_eq!(run(&packed), run(&WinogradWeights::new(&g, 4, &w2, None)));
    assert_ne!(run(&packed), before);
}

/// The largest error of `ours` over the largest float64 value of `exact`.
fn relative_error(ours: &[f32], exact: &[f32]) -> f64 {
    let scale = exact.iter().fold(0f64, |m, &e| m.max(f64::from(e).abs()));
    let worst = ours
        .iter()
        .zip(exact)
        .fold(0f64, |m, (&o, &e)| m.max((f64::from(o) - f64::from(e)).abs()));
    worst / scale
}

/// The input gradient (the flipped, channel-swapped kernels through the same stages, added into `dx`)
/// and the weight gradient (in the Winograd domain, then back through `G`) against the float64 naive
/// convolution's, on every layer of [`cases`] and every microkernel build. The bars, per layer and
/// gradient: F(2,3) 2e-6, about twice the largest measured (7.9e-7 for the input gradient, 1.03e-6
/// for the weight gradient, whose float32 sums run over every tile of the batch); F(4,3) the issue's
/// 1e-5 (measured 4.8e-6 and 2.5e-6; with the usual points 0, ±1, ±2 they were 1.24e-5 and 7.3e-6).
/// `WINOGRAD_ERRORS=1` prints each layer's errors.
#[test]
fn winograd_blocked_gradients_match_float64() {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
    let mut largest = [[0f64; 2]; 5];
    for (name, conv, input) in cases() {
        let conv = conv.with_algo(ConvAlgo::Naive);
        let g = conv.geometry(input).unwrap();
        let [n, c, h, w] = input;
        let (oh, ow) = (g.h.output, g.w.output);
        let x = values(n * c * h * w, 11);
        let wt = values(conv.weight_shape().iter().product(), 12);
        let dy = values(n * g.out_channels * oh * ow, 13);
        let (exact_dx, exact_dw) = {
            let x = Array4::from_shape_vec(input, x.clone()).unwrap();
            let w = Array4::from_shape_vec(conv.weight_shape(), wt.clone()).unwrap();
            let dy = Array4::from_shape_vec(g.output_shape(), dy.clone()).unwrap();
            let dx = conv.backward_input(w.view(), dy.view(), input).unwrap();
            let mut dw = Array4::zeros(conv.weight_shape());
            conv.backward_weight(x.view(), dy.view(), dw.view_mut()).unwrap();
            (dx.into_raw_vec_and_offset().0, dw.into_raw_vec_and_offset().0)
        };
        let in_len = blocked::image_len(c, [h, w], Halo::default());
        let out_len = blocked::image_len(g.out_channels, [oh, ow], Halo::default());
        let xb = blocked::batch_from_nchw(&x, c, [h, w], Halo::default());
        let dyb = blocked::batch_from_nchw(&dy, g.out_channels, [oh, ow], Halo::default());
        // What the gradients are added to: not zero, so a store instead of an add shows.
        let dx_before = values(n * c * h * w, 14);
        let dw_before = values(wt.len(), 15);
        for tile in [2, 4] {
            let forward = WinogradWeights::new(&g, tile, &wt, None);
            let backward = WinogradWeights::for_input_grad(&g, tile, &wt);
            for &isa in &isas {
                let mut ws = Workspace::default();
                let mut dxb = blocked::batch_from_nchw(&dx_before, c, [h, w], Halo::default());
                let mut dx_images = ImagesMut::dense(&mut dxb, n, in_len);
                backward.add_input_grad_images(Images::dense(&dyb, n, out_len), &mut dx_images, &mut ws, isa);
                let dx: Vec<f32> = blocked::batch_to_nchw(&dxb, c, [h, w])
                    .iter()
                    .zip(&dx_before)
                    .map(|(after, before)| after - before)
                    .collect();
                let mut dw = dw_before.clone();
                forward.add_weight_grad_images(
                    Images::dense(&xb, n, in_len),
                    Images::dense(&dyb, n, out_len),
                    &mut dw,
                    &mut ws,
                    isa,
                );
                let dw: Vec<f32> = dw
                    .iter()
                    .zip(&dw_before)
                    .map(|(after, before)| after - before)
                    .collect();
                let errors = [relative_error(&dx, &exact_dx), relative_error(&dw, &exact_dw)];
                if std::env::var_os("WINOGRAD_ERRORS").is_some() && isa == Isa::best() {
                    eprintln!("{name} F({tile},3): dx {:.2e}, dw {:.2e}", errors[0], errors[1]);
                }
                let bar = if tile == 4 { 1e-5 } else { 2e-6 };
                for (which, error) in ["input", "weight"].iter().zip(errors) {
                    assert!(
                        error <= bar,
                        "{name} F({tile},3) {isa:?}: {which} gradient {error:.2e} relative to float64"
                    );
                }
                for (l, e) in largest[tile].iter_mut().zip(errors) {
                    *l = l.max(e);
                }
            }
        }
    }
    eprintln!(
        "largest gradient errors relative to float64 (input, weight): F(2,3) {:.2e} {:.2e}, F(4,3) {:.2e} {:.2e}",
        largest[2][0], largest[2][1], largest[4][0], largest[4][1]
    );
}
