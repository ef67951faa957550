//! Activations are `ndarray` arrays of f32 in NCHW order (PyTorch's layout): `[batch, channels, height,
//! width]`. Kernels work on the contiguous row-major slice; these helpers get one from any view, copying
//! only when the view is not already contiguous.

use std::borrow::Cow;

use ndarray::{ArrayView, ArrayViewMut, Dimension};
use rayon::prelude::*;

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

/// Where a batch of images lies in a buffer: image `n` is `data[n * stride + offset..][..len]`. Dense
/// batches have `offset = 0, stride = len`; a branch of an Inception block sees its channel slice of the
/// concatenated output this way (`offset` = the channels before it, `stride` = all channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BatchLayout {
    offset: usize,
    len: usize,
    stride: usize,
    count: usize,
}

impl BatchLayout {
    /// The layout, checked against a buffer of `buffer_len` values; panics if an image would not fit.
    fn new(buffer_len: usize, count: usize, len: usize, stride: usize, offset: usize) -> Self {
        assert!(offset + len <= stride.max(len), "image slice outside its stride");
        assert!(
            count == 0 || (count - 1) * stride + offset + len <= buffer_len,
            "images exceed their buffer"
        );
        BatchLayout {
            offset,
            len,
            stride,
            count,
        }
    }

    fn range(&self, n: usize) -> std::ops::Range<usize> {
        let start = n * self.stride + self.offset;
        start..start + self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0 || self.count == 0
    }

    /// Where images `range` start in a buffer of `buffer_len` values (panics if they are not all
    /// here); the images themselves are laid out as these.
    fn sub_batch_start(&self, range: &std::ops::Range<usize>, buffer_len: usize) -> usize {
        assert!(
            range.start <= range.end && range.end <= self.count,
            "images {range:?} of {}",
            self.count
        );
        (range.start * self.stride).min(buffer_len)
    }
}

/// `count`, `len` and `is_empty`, the same for [`Images`] and [`ImagesMut`].
macro_rules! batch_accessors {
    () => {
        /// Number of images.
        pub fn count(&self) -> usize {
            self.layout.count
        }

        /// Values per image.
        pub fn len(&self) -> usize {
            self.layout.len
        }

        /// True when the images hold no values.
        pub fn is_empty(&self) -> bool {
            self.layout.is_empty()
        }
    };
}

/// A read-only batch of images inside a buffer (see [`ImagesMut`] for the writable one).
#[derive(Clone, Copy)]
pub struct Images<'a> {
    data: &'a [f32],
    layout: BatchLayout,
}

impl<'a> Images<'a> {
    /// `count` images of `len` values each, one after another.
    pub fn dense(data: &'a [f32], count: usize, len: usize) -> Self {
        Self::strided(data, count, len, len, 0)
    }

    /// `count` images of `len` values, image `n` at `n * stride + offset`. Panics if one would not fit.
    pub fn strided(data: &'a [f32], count: usize, len: usize, stride: usize, offset: usize) -> Self {
        Images {
            layout: BatchLayout::new(data.len(), count, len, stride, offset),
            data,
        }
    }

    /// Image `n`.
    #[inline]
    pub fn get(&self, n: usize) -> &'a [f32] {
        &self.data[self.layout.range(n)]
    }

    batch_accessors!();

    /// Images `range` of the batch.
    pub fn range(&self, range: std::ops::Range<usize>) -> Images<'a> {
        let l = self.layout;
        let start = l.sub_batch_start(&range, self.data.len());
        Images::strided(&self.data[start..], range.len(), l.len, l.stride, l.offset)
    }

    /// The buffer the images lie in, where image 0 starts in it, and the distance between images.
    pub(crate) fn storage(&self) -> (&'a [f32], usize, usize) {
        (self.data, self.layout.offset, self.layout.stride)
    }

    /// The batch as a `count x len` matrix, one image per row.
    pub(crate) fn as_matrix(&self) -> crate::matmul::MatRef<'a> {
        let l = self.layout;
        crate::matmul::MatRef::strided(&self.data[l.offset.min(self.data.len())..], l.count, l.len, l.stride, 1)
    }
}

/// A writable batch of images inside a buffer, laid out as [`Images`].
pub struct ImagesMut<'a> {
    data: &'a mut [f32],
    layout: BatchLayout,
}

impl<'a> ImagesMut<'a> {
    /// `count` images of `len` values each, one after another.
    pub fn dense(data: &'a mut [f32], count: usize, len: usize) -> Self {
        Self::strided(data, count, len, len, 0)
    }

    /// `count` images of `len` values, image `n` at `n * stride + offset`. Panics if one would not fit.
    pub fn strided(data: &'a mut [f32], count: usize, len: usize, stride: usize, offset: usize) -> Self {
        ImagesMut {
            layout: BatchLayout::new(data.len(), count, len, stride, offset),
            data,
        }
    }

    batch_accessors!();

    /// The batch as a writable `count x len` matrix, one image per row.
    pub(crate) fn as_matrix(&mut self) -> crate::matmul::MatMut<'_> {
        let l = self.layout;
        let start = l.offset.min(self.data.len());
        crate::matmul::MatMut::strided(&mut self.data[start..], l.count, l.len, l.stride)
    }

    /// Images `range` of the batch, writable.
    pub fn range_mut(&mut self, range: std::ops::Range<usize>) -> ImagesMut<'_> {
        let l = self.layout;
        let start = l.sub_batch_start(&range, self.data.len());
        ImagesMut::strided(&mut self.data[start..], range.len(), l.len, l.stride, l.offset)
    }

    /// Image `n`, writable.
    #[inline]
    pub fn get_mut(&mut self, n: usize) -> &mut [f32] {
        let range = self.layout.range(n);
        &mut self.data[range]
    }

    /// Image `n`, read-only.
    #[inline]
    pub fn get(&self, n: usize) -> &[f32] {
        &self.data[self.layout.range(n)]
    }

    /// Each image as a disjoint mutable slice, with its index, for parallel iteration.
    pub fn par_iter_mut(&mut self) -> impl IndexedParallelIterator<Item = (usize, &mut [f32])> + '_ {
        let l = self.layout;
        let chunks = self.data.par_chunks_mut(l.stride.max(1)).take(l.count).enumerate();
        chunks.map(move |(n, chunk)| (n, &mut chunk[l.offset..l.offset + l.len]))
    }

    /// Each image as a disjoint mutable slice, with its index, in order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut [f32])> + '_ {
        let l = self.layout;
        let chunks = self.data.chunks_mut(l.stride.max(1)).take(l.count).enumerate();
        chunks.map(move |(n, chunk)| (n, &mut chunk[l.offset..l.offset + l.len]))
    }
}
