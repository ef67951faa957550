//! Max pooling on the blocked layout against the NCHW max pool the executor runs today: the same
//! outputs, argmaxes and input gradients, bit for bit, with ties, NaNs, padding, `ceil_mode`, TF `SAME`
//! and channel counts that are not multiples of 16; and the executor's pair that keeps a u16 per
//! output (each maximum's offset from its window's corner) instead of an argmax, the same bits as well.

use incept::Padding;
use incept::blocked::{self, Halo};
use incept::ndarray::Array4;
use incept::ops::pool::MaxPool2d;
use incept::ops::pool_blocked::{
    max_pool_backward_blocked, max_pool_backward_blocked_offsets, max_pool_forward_blocked,
    max_pool_forward_blocked_offsets,
};

fn to_blocked(x: &[f32], [_, c, h, w]: [usize; 4]) -> Vec<f32> {
    blocked::batch_from_nchw(x, c, [h, w], Halo::default())
}

fn from_blocked<T: Copy + Default>(x: &[T], [n, c, h, w]: [usize; 4]) -> Vec<T> {
    // The same index mapping as blocked::to_nchw, for any element type (argmaxes are u32).
    let blocks = c.div_ceil(16);
    let mut out = vec![T::default(); n * c * h * w];
    for img in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                out[(img * c + ch) * h * w + p] = x[((img * blocks + ch / 16) * h * w + p) * 16 + ch % 16];
            }
        }
    }
    out
}

#[test]
fn blocked_max_pool_matches_the_nchw_one_bit_for_bit() {
    let cases = [
        (
            "3x3/2 ceil (googlenet)",
            MaxPool2d::new([3, 3], [2, 2]).with_ceil_mode(true),
            [2, 19, 11, 12],
        ),
        (
            "3x3/1 pad 1 (branch)",
            MaxPool2d::new([3, 3], [1, 1]).with_padding(Padding::symmetric(1, 1)),
            [1, 33, 6, 6],
        ),
        ("2x2/2", MaxPool2d::new([2, 2], [2, 2]), [2, 16, 8, 9]),
        (
            "3x3/2 SAME",
            MaxPool2d::new([3, 3], [2, 2]).with_padding(Padding::Same),
            [1, 5, 9, 8],
        ),
        (
            "3x3/2 pad 1",
            MaxPool2d::new([3, 3], [2, 2]).with_padding(Padding::symmetric(1, 1)),
            [1, 7, 7, 7],
        ),
    ];
    for (name, pool, shape) in cases {
        let [n, c, h, w] = shape;
        let mut rng = fastrand::Rng::with_seed(3);
        // Few distinct values, so windows hold ties; and two NaNs.
        let mut x: Vec<f32> = (0..n * c * h * w).map(|_| rng.usize(0..5) as f32 - 2.0).collect();
        // Two NaNs side by side (a window's last NaN wins), one more alone, zeros of both signs, -inf.
        x[7] = f32::NAN;
        x[8] = f32::NAN;
        x[n * c * h * w / 2] = f32::NAN;
        for (i, v) in x.iter_mut().enumerate().skip(20).step_by(29) {
            *v = [-0.0, 0.0, f32::NEG_INFINITY][i % 3];
        }
        let (y_ref, cache) = pool
            .forward(Array4::from_shape_vec(shape, x.clone()).unwrap().view())
            .unwrap();
        let g = pool.window.geometry("max_pool2d", shape).unwrap();
        let [_, _, oh, ow] = g.output_shape();
        let out_len = n * blocked::image_len(c, [oh, ow], Halo::default());
        let (mut y, mut argmax) = (vec![0.0; out_len], vec![0u32; out_len]);
        max_pool_forward_blocked(&g, &to_blocked(&x, shape), &mut y, &mut argmax);
        let y = from_blocked(&y, [n, c, oh, ow]);
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        assert!(
            y.iter().zip(y_ref.iter()).all(|(&a, &b)| same(a, b)),
            "{name}: outputs differ"
        );
        assert_eq!(
            from_blocked(&argmax, [n, c, oh, ow]),
            cache.argmax(),
            "{name}: argmaxes differ"
        );

        let dy: Vec<f32> = (0..n * c * oh * ow).map(|_| rng.f32() - 0.5).collect();
        let dx_ref = pool
            .backward(
                &cache,
                Array4::from_shape_vec([n, c, oh, ow], dy.clone()).unwrap().view(),
            )
            .unwrap();
        let mut dx = vec![0.0; n * blocked::image_len(c, [h, w], Halo::default())];
        max_pool_backward_blocked(&g, &argmax, &to_blocked(&dy, [n, c, oh, ow]), &mut dx);
        let dx = from_blocked(&dx, shape);
        assert!(
            dx.iter().zip(dx_ref.iter()).all(|(&a, &b)| a.to_bits() == b.to_bits()),
            "{name}: input gradients differ"
        );

        // With offsets instead of argmaxes: the same outputs and the same gradient.
        let (mut y_taps, mut taps) = (vec![0.0; out_len], vec![0u16; out_len]);
        max_pool_forward_blocked_offsets(&g, &to_blocked(&x, shape), &mut y_taps, &mut taps);
        assert!(
            from_blocked(&y_taps, [n, c, oh, ow])
                .iter()
                .zip(y_ref.iter())
                .all(|(&a, &b)| same(a, b)),
            "{name}: outputs with offsets differ"
        );
        let mut dx_taps = vec![0.0; n * blocked::image_len(c, [h, w], Halo::default())];
        max_pool_backward_blocked_offsets(&g, &taps, &to_blocked(&dy, [n, c, oh, ow]), &mut dx_taps);
        let dx_taps = from_blocked(&dx_taps, shape);
        assert!(
            dx_taps
                .iter()
                .zip(dx_ref.iter())
                .all(|(&a, &b)| a.to_bits() == b.to_bits()),
            "{name}: input gradients from the offsets differ"
        );
    }
}

/// Global average pooling from the blocked layout to dense rows, and back, bit for bit as the NCHW one.
#[test]
fn blocked_global_average_pool_matches_the_nchw_one_bit_for_bit() {
    use incept::ops::pool::{global_avg_pool_backward_images, global_avg_pool_forward};
    use incept::ops::pool_blocked::{global_avg_pool_backward_blocked, global_avg_pool_forward_blocked};
    use incept::tensor::{Images, ImagesMut};
    let shape @ [n, c, h, w] = [3, 37, 5, 4];
    let mut rng = fastrand::Rng::with_seed(4);
    let x: Vec<f32> = (0..n * c * h * w).map(|_| rng.f32() - 0.5).collect();
    let mut y_ref = vec![0.0; n * c];
    global_avg_pool_forward(
        Images::dense(&x, n, c * h * w),
        h * w,
        &mut ImagesMut::dense(&mut y_ref, n, c),
    );
    let mut y = vec![0.0; n * c];
    global_avg_pool_forward_blocked(&to_blocked(&x, shape), c, h * w, &mut y);
    assert!(
        y.iter().zip(&y_ref).all(|(a, b)| a.to_bits() == b.to_bits()),
        "means differ"
    );

    let dy: Vec<f32> = (0..n * c).map(|_| rng.f32() - 0.5).collect();
    let dx0: Vec<f32> = (0..n * c * h * w).map(|_| rng.f32() - 0.5).collect();
    let mut dx_ref = dx0.clone();
    global_avg_pool_backward_images(
        Images::dense(&dy, n, c),
        h * w,
        &mut ImagesMut::dense(&mut dx_ref, n, c * h * w),
    );
    let mut dx = to_blocked(&dx0, shape);
    global_avg_pool_backward_blocked(&dy, c, h * w, &mut dx);
    let padding_stays_zero = dx.chunks_exact(dx.len() / n).all(|img| {
        img.iter()
            .enumerate()
            .all(|(i, &v)| (i / (h * w * 16)) * 16 + i % 16 < c || v == 0.0)
    });
    assert!(padding_stays_zero, "a padding channel received gradient");
    let dx = from_blocked(&dx, shape);
    assert!(
        dx.iter().zip(&dx_ref).all(|(a, b)| a.to_bits() == b.to_bits()),
        "input gradients differ"
    );
}
