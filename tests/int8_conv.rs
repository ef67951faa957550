//! The int8 convolution (`incept::int8::QConv`) against plain loops: the integer sums of its own
//! quantized weights over the u8 input (padding at the zero point), requantized by the scalar formula,
//! equal bit for bit on every build; the quantization of its weights and bias against the float values;
//! and the epilogue's vector build against the scalar formula.

use incept::int8::{QConv, QuantParams, RequantizeIsa, requantize, requantize_pixels};
use incept::microkernel::{Int8Isa, LANES};
use incept::ops::conv::Conv2d;

/// A convolution's shape: input channels, output channels, map, kernel, stride, padding.
#[derive(Debug, Clone, Copy)]
struct Shape {
    inputs: usize,
    outputs: usize,
    map: [usize; 2],
    kernel: [usize; 2],
    stride: usize,
    pad: [usize; 2],
}

const SHAPES: [Shape; 9] = [
    // A grey image (the 4-channel group) and a colour one, 7×7 stride 2 pad 3 (the stems).
    Shape {
        inputs: 1,
        outputs: 64,
        map: [23, 19],
        kernel: [7, 7],
        stride: 2,
        pad: [3, 3],
    },
    // A grey image with a 3-wide kernel: one quad per kernel row, its last tap empty.
    Shape {
        inputs: 1,
        outputs: 16,
        map: [11, 13],
        kernel: [5, 3],
        stride: 1,
        pad: [2, 1],
    },
    Shape {
        inputs: 3,
        outputs: 32,
        map: [17, 17],
        kernel: [3, 3],
        stride: 2,
        pad: [0, 0],
    },
    // Pointwise, whole blocks and ragged ones.
    Shape {
        inputs: 64,
        outputs: 96,
        map: [7, 9],
        kernel: [1, 1],
        stride: 1,
        pad: [0, 0],
    },
    Shape {
        inputs: 24,
        outputs: 40,
        map: [5, 5],
        kernel: [1, 1],
        stride: 1,
        pad: [0, 0],
    },
    // 3×3 and 5×5 padded, more runs than one L1 chunk.
    Shape {
        inputs: 96,
        outputs: 128,
        map: [12, 12],
        kernel: [3, 3],
        stride: 1,
        pad: [1, 1],
    },
    Shape {
        inputs: 16,
        outputs: 32,
        map: [9, 11],
        kernel: [5, 5],
        stride: 1,
        pad: [2, 2],
    },
    // Factorized 1×7 and 7×1 (Inception-v3), stride 2 unpadded.
    Shape {
        inputs: 20,
        outputs: 48,
        map: [10, 10],
        kernel: [1, 7],
        stride: 1,
        pad: [0, 3],
    },
    Shape {
        inputs: 48,
        outputs: 20,
        map: [13, 13],
        kernel: [3, 3],
        stride: 2,
        pad: [0, 0],
    },
];

struct Case {
    conv: QConv,
    /// The blocked (or 4-channel group) input with its halo.
    x: Vec<u8>,
    /// The same input bytes in NCHW order, without halo.
    bytes: Vec<u8>,
    relu: bool,
}

fn case(shape: Shape, seed: u64) -> Case {
    let mut rng = fastrand::Rng::with_seed(seed);
    let conv = Conv2d::new(shape.inputs, shape.outputs, shape.kernel)
        .with_stride([shape.stride; 2])
        .with_padding(incept::geometry::Padding::symmetric(shape.pad[0], shape.pad[1]));
    let g = conv.geometry([1, shape.inputs, shape.map[0], shape.map[1]]).unwrap();
    let taps = shape.kernel[0] * shape.kernel[1];
    let w: Vec<f32> = (0..shape.outputs * shape.inputs * taps)
        .map(|_| rng.f32() - 0.5)
        .collect();
    let b: Vec<f32> = (0..shape.outputs).map(|_| rng.f32() - 0.5).collect();
    let relu = seed % 2 == 0;
    let input = QuantParams {
        scale: 0.02,
        zero_point: rng.u8(..),
    };
    let output = QuantParams {
        scale: 0.05 + rng.f32() * 0.1,
        zero_point: if relu { 0 } else { rng.u8(..) },
    };
    let conv = QConv::new(&g, &w, Some(&b), relu, input, output);
    // Every byte value appears; the halo must be the zero point for the reference below to agree.
    let bytes: Vec<u8> = (0..shape.inputs * shape.map[0] * shape.map[1])
        .map(|_| rng.u8(..))
        .collect();
    let nchw: Vec<f32> = bytes.iter().map(|&q| input.dequantize(q)).collect();
    let mut x = vec![0u8; conv.input_len()];
    conv.input_from_nchw(&nchw, &mut x);
    Case { conv, x, bytes, relu }
}

/// The reference: for every output, the sum over every input channel and tap of weight × input byte
/// (the zero point where the window leaves the image), plus the folded bias, requantized; written
/// blocked.
fn reference(c: &Case) -> Vec<u8> {
    let conv = &c.conv;
    let g = conv.geometry();
    let (h, w) = (g.h.input, g.w.input);
    // Position (y, x) of the padded map; the zero point (real 0) outside the image.
    let input = |ch: usize, y: usize, x: usize| -> i32 {
        let (y, x) = (y as isize - g.h.pad_lo as isize, x as isize - g.w.pad_lo as isize);
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            return i32::from(conv.input_params().zero_point);
        }
        i32::from(c.bytes[(ch * h + y as usize) * w + x as usize])
    };
    let taps = g.h.kernel * g.w.kernel;
    let (oh, ow) = (g.h.output, g.w.output);
    let out = conv.output_params();
    let floor = if c.relu { out.zero_point } else { 0 };
    let mut y = vec![0u8; conv.output_len()];
    for o in 0..g.out_channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0i32;
                for ch in 0..g.in_channels {
                    for tap in 0..taps {
                        let (ky, kx) = (tap / g.w.kernel, tap % g.w.kernel);
                        let w = i32::from(conv.weights().values[(o * g.in_channels + ch) * taps + tap]);
                        acc += w * input(ch, oy * g.h.stride + ky, ox * g.w.stride + kx);
                    }
                }
                let q = requantize(acc, conv.bias()[o], conv.multipliers()[o], out.zero_point, floor);
                y[((o / LANES * oh + oy) * ow + ox) * LANES + o % LANES] = q;
            }
        }
    }
    y
}

#[test]
fn every_build_equals_the_integer_loops_bit_for_bit() {
    for (i, &shape) in SHAPES.iter().enumerate() {
        let c = case(shape, i as u64);
        let expected = reference(&c);
        for isa in Int8Isa::ALL.into_iter().filter(|isa| isa.available()) {
            for requantize in [RequantizeIsa::Scalar, RequantizeIsa::Avx512] {
                if !requantize.available() {
                    continue;
                }
                let mut y = vec![0xAB; c.conv.output_len()];
                c.conv.forward_image(&c.x, &mut y, isa, requantize);
                // Only real channels: the padding lanes of a ragged last block are not read by anyone.
                let g = c.conv.geometry();
                let plane = g.h.output * g.w.output * LANES;
                for (at, (&found, &want)) in y.iter().zip(&expected).enumerate() {
                    let channel = at / plane * LANES + at % LANES;
                    if channel < g.out_channels {
                        assert_eq!(found, want, "{shape:?} {isa:?} {requantize:?}: byte {at}");
                    }
                }
            }
        }
    }
}

#[test]
fn weights_and_bias_are_the_float_ones_at_their_scales() {
    for (i, &shape) in SHAPES.iter().enumerate() {
        let mut rng = fastrand::Rng::with_seed(100 + i as u64);
        let conv = Conv2d::new(shape.inputs, shape.outputs, shape.kernel);
        let g = conv.geometry([1, shape.inputs, shape.map[0], shape.map[1]]).unwrap();
        let per_output = shape.inputs * shape.kernel[0] * shape.kernel[1];
        let w: Vec<f32> = (0..shape.outputs * per_output)
            .map(|_| (rng.f32() - 0.5) * 3.0)
            .collect();
        let b: Vec<f32> = (0..shape.outputs).map(|_| rng.f32() - 0.5).collect();
        let input = QuantParams {
            scale: 0.03,
            zero_point: 77,
        };
        let output = QuantParams {
            scale: 0.1,
            zero_point: 0,
        };
        let q = QConv::new(&g, &w, Some(&b), true, input, output);
        for o in 0..shape.outputs {
            let scale = q.weights().scales[o];
            let row = &w[o * per_output..][..per_output];
            let largest = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(scale, largest / 127.0, "scale of output {o}");
            let mut sum = 0i64;
            for (k, &v) in row.iter().enumerate() {
                let found = q.weights().values[o * per_output + k];
                // The nearest step, ties to even, never beyond ±127.
                assert!((f64::from(found) - f64::from(v / scale)).abs() <= 0.5, "weight {o},{k}");
                assert!((-127..=127).contains(&found));
                sum += i64::from(found);
            }
            let product = f64::from(input.scale) * f64::from(scale);
            let expected = (f64::from(b[o]) / product).round_ties_even() as i64 - 77 * sum;
            assert_eq!(i64::from(q.bias()[o]), expected, "bias of output {o}");
            let m = (product / f64::from(output.scale)) as f32;
            assert_eq!(q.multipliers()[o], m, "multiplier of output {o}");
        }
    }
}

#[test]
fn the_vector_epilogue_equals_the_scalar_formula() {
    if !RequantizeIsa::Avx512.available() {
        eprintln!("AVX-512 epilogue skipped: this CPU has no AVX-512F");
        return;
    }
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..2000 {
        let pixels = rng.usize(1..9);
        let acc: Vec<i32> = (0..pixels * LANES)
            .map(|_| match rng.usize(0..4) {
                0 => rng.i32(..),
                _ => rng.i32(-(1 << 20)..1 << 20),
            })
            .collect();
        let bias: Vec<i32> = (0..LANES).map(|_| rng.i32(-(1 << 24)..1 << 24)).collect();
        let multiplier: Vec<f32> = (0..LANES)
            .map(|_| (rng.f32() + 0.01) * 2f32.powi(-rng.i32(0..16)))
            .collect();
        let zero_point = rng.u8(..);
        let floor = if round % 2 == 0 { zero_point } else { 0 };
        let mut scalar = vec![0u8; acc.len()];
        let mut vector = vec![0u8; acc.len()];
        requantize_pixels(
            RequantizeIsa::Scalar,
            &acc,
            &bias,
            &multiplier,
            (zero_point, floor),
            &mut scalar,
        );
        requantize_pixels(
            RequantizeIsa::Avx512,
            &acc,
            &bias,
            &multiplier,
            (zero_point, floor),
            &mut vector,
        );
        assert_eq!(scalar, vector, "round {round}");
    }
}
