//! The Winograd transforms F(m×m, 3×3) for output tiles of m = 2 and m = 4 (Lavin & Gray 2016), the
//! one place their matrices live. A tile of `m × m` outputs needs a window of `m + 2` inputs a side:
//!
//! ```text
//! Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//! ```
//!
//! F(4,3) uses the points 0, ±1, 1/2, -2 and ∞ (36 products per tile and channel pair instead of
//! 144); F(2,3) the points 0, ±1 and ∞ (16 instead of 36), with smaller constants and so smaller
//! rounding errors. F(4,3)'s usual points are 0, ±1, ±2 (Lavin & Gray); among the sets of 0, ±1 and
//! two of ±1/4, ±1/2, ±2/3, ±3/2, ±2, ±3, the pair 1/2, -2 gave the smallest float32 error in a
//! simulation of one tile reduced over 192 channels (uniform inputs, 100-300 tiles: mean 2.1e-6
//! against 3.8e-6 for ±2, largest 5.8e-6 against 1.4e-5; the matrices from Cook-Toom, as Lavin's
//! wincnn builds them; Barabasz et al. 2020 study such choices). The 1-D transforms are generic over the value: one `f32`, or 16 channels side by side
//! ([`Lanes`], the blocked layout's vector).

use std::ops::{Add, Mul, Sub};

/// What the 1-D transforms compute on.
pub(super) trait Value: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<f32, Output = Self> {}

impl Value for f32 {}

/// 16 channels of one pixel: the blocked layout's vector.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(transparent)]
pub(super) struct Lanes(pub [f32; 16]);

impl Lanes {
    pub(super) const ZERO: Lanes = Lanes([0.0; 16]);

    /// The 16 values at the start of `values`.
    #[inline(always)]
    pub(super) fn load(values: &[f32]) -> Lanes {
        Lanes(values[..16].try_into().expect("16 lanes"))
    }

    #[inline(always)]
    pub(super) fn store(self, values: &mut [f32]) {
        values[..16].copy_from_slice(&self.0);
    }
}

impl Add for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn add(self, other: Lanes) -> Lanes {
        Lanes(std::array::from_fn(|i| self.0[i] + other.0[i]))
    }
}

impl Sub for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn sub(self, other: Lanes) -> Lanes {
        Lanes(std::array::from_fn(|i| self.0[i] - other.0[i]))
    }
}

impl Mul<f32> for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn mul(self, k: f32) -> Lanes {
        Lanes(self.0.map(|v| v * k))
    }
}

impl Value for Lanes {}

/// `Bᵀ d` for one window column (`M + 2` values; the rest of the array is ignored and returned as is).
///
/// ```text
/// F(4,3): Bᵀ = [ 1  -3/2   -2   3/2   1    0 ]     F(2,3): Bᵀ = [ 1  0 -1  0 ]
///              [ 0   -1   1/2   5/2   1    0 ]                  [ 0  1  1  0 ]
///              [ 0    1  -5/2   1/2   1    0 ]                  [ 0 -1  1  0 ]
///              [ 0   -2    -1    2    1    0 ]                  [ 0  1  0 -1 ]
///              [ 0  1/2    -1  -1/2   1    0 ]
///              [ 0    1  -3/2   -2   3/2   1 ]
/// ```
#[inline(always)]
pub(super) fn input_1d<const M: usize, T: Value>(d: [T; 6]) -> [T; 6] {
    if M == 4 {
        [
            d[0] - d[2] * 2.0 + d[4] + (d[3] - d[1]) * 1.5,
            d[2] * 0.5 - d[1] + d[3] * 2.5 + d[4],
            d[1] - d[2] * 2.5 + d[3] * 0.5 + d[4],
            (d[3] - d[1]) * 2.0 - d[2] + d[4],
            (d[1] - d[3]) * 0.5 - d[2] + d[4],
            d[1] - d[3] * 2.0 + d[5] + (d[4] - d[2]) * 1.5,
        ]
    } else {
        [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3], d[4], d[5]]
    }
}

/// `Aᵀ m` for one column of `M + 2` transformed values (the first `M` results are the outputs).
///
/// ```text
/// F(4,3): Aᵀ = [ 1  1  1   1    1  0 ]     F(2,3): Aᵀ = [ 1  1  1  0 ]
///              [ 0  1 -1  1/2  -2  0 ]                  [ 0  1 -1 -1 ]
///              [ 0  1  1  1/4   4  0 ]
///              [ 0  1 -1  1/8  -8  1 ]
/// ```
#[inline(always)]
pub(super) fn output_1d<const M: usize, T: Value>(m: [T; 6]) -> [T; 4] {
    if M == 4 {
        let (sum, diff) = (m[1] + m[2], m[1] - m[2]);
        [
            m[0] + sum + m[3] + m[4],
            diff + m[3] * 0.5 - m[4] * 2.0,
            sum + m[3] * 0.25 + m[4] * 4.0,
            diff + m[3] * 0.125 - m[4] * 8.0 + m[5],
        ]
    } else {
        [m[0] + m[1] + m[2], m[1] - m[2] - m[3], m[0], m[0]]
    }
}

/// `A y` for one column of `M` output gradients: the adjoint of [`output_1d`], which carries a tile's
/// output gradient back to its `M + 2` transformed values (`dM = A dY Aᵀ`).
#[inline(always)]
pub(super) fn output_adjoint_1d<const M: usize, T: Value>(y: [T; 4]) -> [T; 6] {
    if M == 4 {
        let (even, odd) = (y[0] + y[2], y[1] + y[3]);
        [
            y[0],
            even + odd,
            even - odd,
            y[0] + y[1] * 0.5 + y[2] * 0.25 + y[3] * 0.125,
            y[0] - y[1] * 2.0 + y[2] * 4.0 - y[3] * 8.0,
            y[3],
        ]
    } else {
        [y[0], y[0] + y[1], y[0] - y[1], y[1] * -1.0, y[0], y[0]]
    }
}

/// `G g Gᵀ` for one 3×3 kernel (row-major), `(M + 2)²` values row-major, computed in float64 and
/// rounded once.
///
/// ```text
/// F(4,3): G = [    1      0      0   ]     F(2,3): G = [  1    0    0  ]
///             [  1/3    1/3    1/3  ]                 [ 1/2  1/2  1/2 ]
///             [ -1/3    1/3   -1/3  ]                 [ 1/2 -1/2  1/2 ]
///             [ -16/15 -8/15  -4/15 ]                 [  0    0    1  ]
///             [  1/15  -2/15   4/15 ]
///             [    0      0      1  ]
/// ```
pub(super) fn kernel<const M: usize>(k: &[f32; 9]) -> [f32; 36] {
    let g = |v: [f64; 3]| -> [f64; 6] {
        if M == 4 {
            [
                v[0],
                (v[0] + v[1] + v[2]) / 3.0,
                (v[1] - v[0] - v[2]) / 3.0,
                -(16.0 * v[0] + 8.0 * v[1] + 4.0 * v[2]) / 15.0,
                (v[0] - 2.0 * v[1] + 4.0 * v[2]) / 15.0,
                v[2],
            ]
        } else {
            [
                v[0],
                (v[0] + v[1] + v[2]) / 2.0,
                (v[0] - v[1] + v[2]) / 2.0,
                v[2],
                0.0,
                0.0,
            ]
        }
    };
    let window = M + 2;
    let k = k.map(f64::from);
    // Columns first (G g), then rows ((G g) Gᵀ).
    let cols: [[f64; 6]; 3] = std::array::from_fn(|j| g([k[j], k[3 + j], k[6 + j]]));
    let mut out = [0.0; 36];
    for i in 0..window {
        let row = g([cols[0][i], cols[1][i], cols[2][i]]);
        for (o, v) in out[i * window..][..window].iter_mut().zip(row) {
            *o = v as f32;
        }
    }
    out
}

/// `Gᵀ u G` for one kernel's `(M + 2)²` transformed gradient values (row-major): the adjoint of
/// [`kernel`], which carries a gradient in the Winograd domain back to the 3×3 kernel, in float64.
pub(super) fn kernel_adjoint<const M: usize>(u: &[f64; 36]) -> [f64; 9] {
    let gt = |v: [f64; 6]| -> [f64; 3] {
        if M == 4 {
            [
                v[0] + (v[1] - v[2]) / 3.0 + (v[4] - 16.0 * v[3]) / 15.0,
                (v[1] + v[2]) / 3.0 - (8.0 * v[3] + 2.0 * v[4]) / 15.0,
                (v[1] - v[2]) / 3.0 + (4.0 * v[4] - 4.0 * v[3]) / 15.0 + v[5],
            ]
        } else {
            [
                v[0] + (v[1] + v[2]) / 2.0,
                (v[1] - v[2]) / 2.0,
                (v[1] + v[2]) / 2.0 + v[3],
            ]
        }
    };
    let window = M + 2;
    // Rows first (u G), then columns (Gᵀ (u G)).
    let rows: [[f64; 3]; 6] = std::array::from_fn(|i| {
        if i < window {
            gt(std::array::from_fn(
                |j| if j < window { u[i * window + j] } else { 0.0 },
            ))
        } else {
            [0.0; 3]
        }
    });
    let mut out = [0.0; 9];
    for b in 0..3 {
        let column = gt(std::array::from_fn(|i| rows[i][b]));
        for (a, v) in column.into_iter().enumerate() {
            out[a * 3 + b] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tile through the three transforms: `Aᵀ [(G k Gᵀ) ⊙ (Bᵀ d B)] A` for a window `d`.
    fn tile<const M: usize>(d: &[[f32; 6]; 6], k: &[f32; 9]) -> [[f32; 4]; 4] {
        let window = M + 2;
        // Bᵀ d: columns, then (Bᵀ d) B: rows.
        let mut cols = [[0f32; 6]; 6];
        for j in 0..window {
            let v = input_1d::<M, f32>(std::array::from_fn(|i| d[i][j]));
            for i in 0..6 {
                cols[i][j] = v[i];
            }
        }
        let v: [[f32; 6]; 6] = std::array::from_fn(|i| input_1d::<M, f32>(cols[i]));
        let u = kernel::<M>(k);
        let m: [[f32; 6]; 6] = std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                if i < window && j < window {
                    u[i * window + j] * v[i][j]
                } else {
                    0.0
                }
            })
        });
        let mut rows = [[0f32; 6]; 4];
        for j in 0..window {
            let o = output_1d::<M, f32>(std::array::from_fn(|i| m[i][j]));
            for i in 0..4 {
                rows[i][j] = o[i];
            }
        }
        std::array::from_fn(|i| output_1d::<M, f32>(rows[i]))
    }

    /// `<A y, m> = <y, Aᵀ m>` and `<G k Gᵀ, u> = <k, Gᵀ u G>`: the adjoints are the transposes.
    #[test]
    fn adjoints_are_the_transposes_of_the_transforms() {
        fn check<const M: usize>() {
            let window = M + 2;
            let m: [f32; 6] = std::array::from_fn(|i| (i as f32 * 0.37 - 0.8).sin());
            let y: [f32; 4] = std::array::from_fn(|i| (i as f32 * 1.3 + 0.2).cos());
            let forward = output_1d::<M, f32>(m);
            let back = output_adjoint_1d::<M, f32>(y);
            let lhs: f64 = (0..M).map(|a| f64::from(forward[a]) * f64::from(y[a])).sum();
            let rhs: f64 = (0..window).map(|i| f64::from(back[i]) * f64::from(m[i])).sum();
            assert!((lhs - rhs).abs() < 1e-5, "F({M},3) output adjoint: {lhs} vs {rhs}");
            let k: [f32; 9] = std::array::from_fn(|i| (i as f32 * 0.71 + 0.3).sin());
            let u: [f64; 36] = std::array::from_fn(|i| (i as f64 * 0.53 - 1.1).cos());
            let transformed = kernel::<M>(&k);
            let lhs: f64 = (0..window * window).map(|i| f64::from(transformed[i]) * u[i]).sum();
            let back = kernel_adjoint::<M>(&u);
            let rhs: f64 = (0..9).map(|i| f64::from(k[i]) * back[i]).sum();
            assert!((lhs - rhs).abs() < 1e-5, "F({M},3) kernel adjoint: {lhs} vs {rhs}");
        }
        check::<2>();
        check::<4>();
    }

    #[test]
    fn transforms_compute_the_convolution_of_a_tile() {
        let d: [[f32; 6]; 6] = std::array::from_fn(|i| std::array::from_fn(|j| ((i * 7 + j * 3) % 11) as f32 - 5.0));
        let k: [f32; 9] = std::array::from_fn(|i| ((i * 5) % 7) as f32 * 0.25 - 0.75);
        for (m, y) in [(2, tile::<2>(&d, &k)), (4, tile::<4>(&d, &k))] {
            for (oy, row) in y.iter().enumerate().take(m) {
                for (ox, &value) in row.iter().enumerate().take(m) {
                    let expected: f32 = (0..9).map(|t| d[oy + t / 3][ox + t % 3] * k[t]).sum();
                    assert!(
                        (value - expected).abs() < 1e-4,
                        "F({m},3) output ({oy}, {ox}): {value} vs {expected}"
                    );
                }
            }
        }
    }
}
