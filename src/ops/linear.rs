//! Fully connected layer as PyTorch's `nn.Linear`: `y = x · Wᵀ + b` with `W` of shape `[out, in]`.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};

use crate::error::{Error, Result, expect_shape};
use crate::matmul::{MatMut, MatRef, Threads, matmul};
use crate::tensor::{Images, ImagesMut, contiguous, with_contiguous_mut};

/// A linear layer's shape; the weight `[out, in]` and bias `[out]` are passed to each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
}

impl Linear {
    /// A layer mapping `in_features` to `out_features`.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Linear {
            in_features,
            out_features,
        }
    }

    fn check_input(&self, x: &[usize]) -> Result<usize> {
        if x.len() != 2 || x[1] != self.in_features {
            return Err(Error::shape(
                "linear input",
                format!("[n, {}]", self.in_features),
                format!("{x:?}"),
            ));
        }
        Ok(x[0])
    }

    /// `y = x · Wᵀ + b`.
    pub fn forward(&self, x: ArrayView2<f32>, w: ArrayView2<f32>, b: Option<ArrayView1<f32>>) -> Result<Array2<f32>> {
        let n = self.check_input(x.shape())?;
        expect_shape("linear weight", &[self.out_features, self.in_features], w.shape())?;
        let mut y = Array2::zeros([n, self.out_features]);
        if let Some(b) = &b {
            expect_shape("linear bias", &[self.out_features], b.shape())?;
            y.rows_mut().into_iter().for_each(|mut row| row.assign(b));
        }
        let (xs, ws) = (contiguous(&x), contiguous(&w));
        let y_mat = MatMut::row_major(
            y.as_slice_mut().expect("fresh arrays are contiguous"),
            n,
            self.out_features,
        );
        let w_t = MatRef::row_major(&ws, self.out_features, self.in_features).t();
        matmul(
            y_mat,
            MatRef::row_major(&xs, n, self.in_features),
            w_t,
            b.is_some(),
            Threads::Pool,
        );
        Ok(y)
    }

    /// `dx = dy · W`.
    pub fn backward_input(&self, w: ArrayView2<f32>, dy: ArrayView2<f32>) -> Result<Array2<f32>> {
        expect_shape("linear weight", &[self.out_features, self.in_features], w.shape())?;
        let n = dy.shape()[0];
        expect_shape("linear output gradient", &[n, self.out_features], dy.shape())?;
        let mut dx = Array2::zeros([n, self.in_features]);
        let (ws, dys) = (contiguous(&w), contiguous(&dy));
        let dx_mat = MatMut::row_major(
            dx.as_slice_mut().expect("fresh arrays are contiguous"),
            n,
            self.in_features,
        );
        matmul(
            dx_mat,
            MatRef::row_major(&dys, n, self.out_features),
            MatRef::row_major(&ws, self.out_features, self.in_features),
            false,
            Threads::Pool,
        );
        Ok(dx)
    }

    /// Adds `dyᵀ · x` to `dw`.
    pub fn backward_weight(&self, x: ArrayView2<f32>, dy: ArrayView2<f32>, dw: ArrayViewMut2<f32>) -> Result<()> {
        let n = self.check_input(x.shape())?;
        expect_shape("linear output gradient", &[n, self.out_features], dy.shape())?;
        expect_shape(
            "linear weight gradient",
            &[self.out_features, self.in_features],
            dw.shape(),
        )?;
        let (xs, dys) = (contiguous(&x), contiguous(&dy));
        with_contiguous_mut(dw, |dw| {
            let dw_mat = MatMut::row_major(dw, self.out_features, self.in_features);
            let dy_t = MatRef::row_major(&dys, n, self.out_features).t();
            matmul(
                dw_mat,
                dy_t,
                MatRef::row_major(&xs, n, self.in_features),
                true,
                Threads::Pool,
            );
        });
        Ok(())
    }

    /// Adds the column sums of `dy` to `db`.
    pub fn backward_bias(&self, dy: ArrayView2<f32>, db: ArrayViewMut1<f32>) -> Result<()> {
        let n = dy.shape()[0];
        expect_shape("linear output gradient", &[n, self.out_features], dy.shape())?;
        expect_shape("linear bias gradient", &[self.out_features], db.shape())?;
        let dys = contiguous(&dy);
        with_contiguous_mut(db, |db| {
            crate::ops::conv::bias_grad(Images::dense(&dys, n, self.out_features), self.out_features, 1, db)
        });
        Ok(())
    }
}

impl Linear {
    /// `y = x · Wᵀ + b` on a batch of rows (one image per row, as flattened activations).
    pub fn forward_images(&self, x: Images<'_>, w: &[f32], b: Option<&[f32]>, y: &mut ImagesMut<'_>) {
        if let Some(b) = b {
            y.iter_mut().for_each(|(_, row)| row.copy_from_slice(b));
        }
        let w_t = MatRef::row_major(w, self.out_features, self.in_features).t();
        matmul(y.as_matrix(), x.as_matrix(), w_t, b.is_some(), Threads::Pool);
    }

    /// Adds `dy · W` into `dx`.
    pub fn backward_input_images(&self, w: &[f32], dy: Images<'_>, dx: &mut ImagesMut<'_>) {
        let w = MatRef::row_major(w, self.out_features, self.in_features);
        matmul(dx.as_matrix(), dy.as_matrix(), w, true, Threads::Pool);
    }

    /// Adds `dyᵀ · x` into `dw`.
    pub fn backward_weight_images(&self, x: Images<'_>, dy: Images<'_>, dw: &mut [f32]) {
        let dw = MatMut::row_major(dw, self.out_features, self.in_features);
        matmul(dw, dy.as_matrix().t(), x.as_matrix(), true, Threads::Pool);
    }
}
