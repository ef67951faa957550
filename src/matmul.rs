//! A safe front to the `gemm` crate: strided matrix views whose bounds are checked once, then one call.

/// A read-only matrix inside a slice: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows x cols` matrix at the start of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A matrix with explicit strides; panics if any element would lie outside `data`.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Self {
        assert!(
            fits(data.len(), rows, cols, row_stride, col_stride),
            "matrix view exceeds its slice"
        );
        MatRef {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The transpose, without moving data.
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// A writable row-major matrix inside a slice: element `(r, c)` is `data[r * row_stride + c]`.
pub(crate) struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// A dense row-major `rows x cols` matrix at the start of `data`; panics if `data` is too short.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// Rows `row_stride` apart; panics if any element would lie outside `data`.
    pub fn strided(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(
            fits(data.len(), rows, cols, row_stride, 1),
            "matrix view exceeds its slice"
        );
        MatMut {
            data,
            rows,
            cols,
            row_stride,
        }
    }
}

fn fits(len: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * row_stride + (cols - 1) * col_stride < len
}

pub(crate) use crate::parallel::Threads;

/// `c = a * b`, or `c += a * b` when `accumulate` is set.
pub(crate) fn matmul(c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, accumulate: bool, threads: Threads) {
    assert_eq!((a.rows, b.cols), (c.rows, c.cols), "matmul output shape");
    assert_eq!(a.cols, b.rows, "matmul inner dimension");
    let (m, n, k) = (c.rows, c.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.data
                .chunks_mut(c.row_stride)
                .take(m)
                .for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::Pool => gemm::Parallelism::Rayon(crate::parallel::threads()),
    };
    // SAFETY: the constructors checked that every element addressed by (rows, cols, strides) lies inside
    // its slice; the output is borrowed mutably and the inputs immutably, so they cannot overlap; strides
    // are non-negative and fit in isize because they index real slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
            1,
            c.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_naive_with_transposes_and_accumulation() {
        let mut rng = fastrand::Rng::with_seed(7);
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (17, 13, 33), (64, 1, 9)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.f32() - 0.5).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.f32() - 0.5).collect();
            let expected = naive(&a, &b, m, n, k);
            let mut c = vec![0.0; m * n];
            matmul(
                MatMut::row_major(&mut c, m, n),
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, k, n),
                false,
                Threads::One,
            );
            // Accumulating a * b once more, with b read through a transposed view of its transpose.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            matmul(
                MatMut::row_major(&mut c, m, n),
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&bt, n, k).t(),
                true,
                Threads::Pool,
            );
            for (x, y) in c.iter().zip(&expected) {
                assert!((x - 2.0 * y).abs() < 1e-4, "{m}x{n}x{k}: {x} vs {}", 2.0 * y);
            }
        }
    }
}

#[cfg(test)]
mod accumulate_tests {
    use super::*;

    #[test]
    fn accumulates_onto_nonzero_output_for_conv_backward_shapes() {
        let mut rng = fastrand::Rng::with_seed(9);
        for &(m, n, k) in &[(832, 9, 256), (832, 9, 160), (528, 36, 64), (64, 9, 8), (17, 3, 5)] {
            // c += aᵀ·b with a stored [k, m] (the transposed weight view of 1x1 backward).
            let a: Vec<f32> = (0..k * m).map(|_| rng.f32() - 0.5).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.f32() - 0.5).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.f32() - 0.5).collect();
            let mut c = c0.clone();
            matmul(
                MatMut::row_major(&mut c, m, n),
                MatRef::row_major(&a, k, m).t(),
                MatRef::row_major(&b, k, n),
                true,
                Threads::One,
            );
            let mut worst = 0f32;
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 =
                        c0[i * n + j] as f64 + (0..k).map(|p| a[p * m + i] as f64 * b[p * n + j] as f64).sum::<f64>();
                    worst = worst.max((c[i * n + j] - exact as f32).abs());
                }
            }
            assert!(worst < 1e-4, "{m}x{n}x{k}: accumulate error {worst}");
        }
    }
}
