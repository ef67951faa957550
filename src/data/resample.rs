//! PIL's `Image.resize` of 8-bit images, bit for bit: torchvision's `Resize` on a PIL image (what
//! torchvision's and timm's preprocessing run) calls it, so incept's images match theirs exactly.
//!
//! PIL convolves each axis with a filter widened by the shrink factor (its antialiasing), with
//! coefficients in double precision normalized to sum to 1, then turned into 22-bit fixed point; one
//! pass rounds its result to bytes before the other runs (Pillow's `libImaging/Resample.c`). Pillow 13
//! runs the vertical pass first when the height loses more than twice as many pixels as the width
//! (python-pillow/Pillow#9549; earlier versions always start horizontally): the order changes a few
//! values by one, so it is followed too. Tests check both filters and both orders against Pillow 13.

/// The interpolation filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// PIL's `BILINEAR` (a triangle of half-width 1): torchvision's default.
    Bilinear,
    /// PIL's `BICUBIC` (Keys' cubic with a = -0.5, half-width 2): timm's for the Inception models.
    Bicubic,
}

impl Filter {
    /// Half-width of the filter at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fractional bits of the fixed-point coefficients (PIL's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output index along an axis of `input` values resized to `output`: the first source index
/// and the filter's weights from there, normalized to sum to 1 (PIL's `precompute_coeffs`, in double
/// precision). Floating-point resizing ([`super::transforms::resize_bilinear`]) uses them as they are.
pub fn weights(input: usize, output: usize, filter: Filter) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..output)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale;
            // C's `(int)` truncation; a negative start is clamped to 0 either way.
            let first = ((centre - support + 0.5) as i64).max(0) as usize;
            let end = ((centre + support + 0.5) as i64).min(input as i64) as usize;
            let raw: Vec<f64> = (first..end)
                .map(|i| filter.weight((i as f64 - centre + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let normalized = raw.iter().map(|&w| if total != 0.0 { w / total } else { w }).collect();
            (first, normalized)
        })
        .collect()
}

/// [`weights`] in PIL's 22-bit fixed point, each rounded half away from zero (`normalize_coeffs_8bpc`).
fn coefficients(input: usize, output: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    weights(input, output, filter)
        .into_iter()
        .map(|(first, w)| {
            let fixed = w
                .iter()
                .map(|&w| (w * f64::from(1u32 << PRECISION_BITS)).round() as i32);
            (first, fixed.collect())
        })
        .collect()
}

/// A fixed-point sum back to a byte, saturating (PIL's `clip8`).
fn to_byte(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass along an axis: `lines` lines of `input` values `step` apart, each line's start `stride`
/// after the previous one's, resized to `output` values.
fn pass(src: &[u8], [lines, stride, step]: [usize; 3], output: usize, coefficients: &[(usize, Vec<i32>)]) -> Vec<u8> {
    let mut out = vec![0u8; lines * output];
    for (line, dst) in out.chunks_exact_mut(output).enumerate() {
        for (value, (first, weights)) in dst.iter_mut().zip(coefficients) {
            let mut sum: i64 = 1 << (PRECISION_BITS - 1);
            for (k, &w) in weights.iter().enumerate() {
                sum += i64::from(src[line * stride + (first + k) * step]) * i64::from(w);
            }
            *value = to_byte(sum);
        }
    }
    out
}

/// Resizes `channels` planes of `h × w` bytes to `oh × ow`, as PIL resizes an `L` or `RGB` image.
pub fn resize(src: &[u8], channels: usize, [h, w]: [usize; 2], [oh, ow]: [usize; 2], filter: Filter) -> Vec<u8> {
    let vertical_first = oh < h && (h - oh) as i64 > 2 * (w as i64 - ow as i64);
    let (rows, columns) = (coefficients(w, ow, filter), coefficients(h, oh, filter));
    // A pass along rows of `width` values (lines `width` apart, values 1 apart) or along columns
    // (lines 1 apart, values `width` apart; its result comes out transposed); an axis that keeps its
    // size is not resampled.
    let along_rows = |plane: Vec<u8>, height: usize| -> Vec<u8> {
        if ow == w {
            plane
        } else {
            pass(&plane, [height, w, 1], ow, &rows)
        }
    };
    let along_columns = |plane: Vec<u8>, width: usize| -> Vec<u8> {
        if oh == h {
            return plane;
        }
        let transposed = pass(&plane, [width, 1, width], oh, &columns);
        (0..oh)
            .flat_map(|y| (0..width).map(move |x| (y, x)))
            .map(|(y, x)| transposed[x * oh + y])
            .collect()
    };
    let mut out = Vec::with_capacity(channels * oh * ow);
    for plane in src.chunks_exact(h * w).take(channels) {
        out.extend(if vertical_first {
            along_rows(along_columns(plane.to_vec(), w), oh)
        } else {
            along_columns(along_rows(plane.to_vec(), h), ow)
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for (input, output) in [(28, 96), (512, 256), (512, 341), (100, 7), (7, 100)] {
                for (_, weights) in coefficients(input, output, filter) {
                    let total: i32 = weights.iter().sum();
                    // Each rounding is within half a unit.
                    assert!((total - (1 << PRECISION_BITS)).abs() <= weights.len() as i32, "{total}");
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![200u8; 3 * 50 * 70];
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            let out = resize(&src, 3, [50, 70], [31, 99], filter);
            assert_eq!(out.len(), 3 * 31 * 99);
            assert!(out.iter().all(|&v| v == 200), "{filter:?}");
        }
    }

    /// Values printed by Pillow 13 (`Image.fromarray(a).resize((w, h), f)`) for a 4×5 ramp
    /// `a[y, x] = 10·x + 50·y` (uint8) with two pixels changed, so sharp edges meet bicubic's negative
    /// lobes: to 3×7 the height loses 1 row and the width gains 2, so the vertical pass runs first
    /// (the other order gives different bytes); to 3×2 the horizontal one does.
    #[test]
    fn matches_pil() {
        let mut src: Vec<u8> = (0..4)
            .flat_map(|y| (0..5).map(move |x| (10 * x + 50 * y) as u8))
            .collect();
        src[5 + 2] = 250;
        src[2 * 5 + 1] = 3;
        let cases: [(Filter, [usize; 2], &[u8]); 4] = [
            (Filter::Bilinear, [3, 2], &[37, 57, 84, 123, 132, 164]),
            (Filter::Bicubic, [3, 2], &[34, 54, 83, 128, 133, 168]),
            (
                Filter::Bilinear,
                [3, 7],
                &[
                    15, 21, 43, 89, 58, 49, 55, 75, 50, 76, 185, 128, 109, 115, 135, 122, 125, 155, 162, 169, 175,
                ],
            ),
            (
                Filter::Bicubic,
                [3, 7],
                &[
                    8, 15, 43, 84, 51, 40, 50, 78, 38, 67, 191, 130, 104, 116, 142, 126, 123, 150, 166, 177, 182,
                ],
            ),
        ];
        for (filter, size, pil) in cases {
            assert_eq!(resize(&src, 1, [4, 5], size, filter), pil, "{filter:?} to {size:?}");
        }
    }
}
