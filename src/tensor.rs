//! Activations are `ndarray` arrays of f32 in NCHW order (PyTorch's layout): `[batch, channels, height,
//! width]`. Kernels work on the contiguous row-major slice; these helpers get one from any view, copying
//! only when the view is not already contiguous.

use std::borrow::Cow;

use ndarray::{ArrayView, ArrayViewMut, Dimension};

/// The elements of `x` in logical (row-major) order, borrowed when `x` is contiguous.
pub(crate) fn contiguous<'a, D: Dimension>(x: &'a ArrayView<'_, f32, D>) -> Cow<'a, [f32]> {
    match x.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

/// Runs `f` on the elements of `a` in logical order as one mutable slice, writing back through a copy
/// when `a` is not contiguous.
pub(crate) fn with_contiguous_mut<D: Dimension>(mut a: ArrayViewMut<'_, f32, D>, f: impl FnOnce(&mut [f32])) {
    if let Some(s) = a.as_slice_mut() {
        return f(s);
    }
    let mut copy: Vec<f32> = a.iter().copied().collect();
    f(&mut copy);
    for (dst, src) in a.iter_mut().zip(copy) {
        *dst = src;
    }
}

/// The shape of a 4-D view as an array.
pub(crate) fn dims4<S: ndarray::Data>(x: &ndarray::ArrayBase<S, ndarray::Ix4>) -> [usize; 4] {
    let s = x.shape();
    [s[0], s[1], s[2], s[3]]
}
