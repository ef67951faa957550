//! Ops that move values (flatten, channel concat, zero padding) and the residual add. The graph executor
//! calls the functions on batches of images; the ndarray functions are the API for single ops.

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, s};
use rayon::prelude::*;

use crate::microkernel::LANES;

use crate::error::{Error, Result, expect_shape};
use crate::geometry::Pads;
use crate::kernels;
use crate::tensor::{Images, ImagesMut, contiguous, dims4};

/// Copies each plane of `x` (planes of `[h, w]`) into the middle of a zero plane grown by `pads`.
pub fn zero_pad_images(x: Images<'_>, map: [usize; 2], pads: Pads, y: &mut ImagesMut<'_>) {
    zero_pad_pixels(x, map, pads, 1, y);
}

/// [`zero_pad_images`] on blocked images (`crate::blocked`): every pixel is 16 values.
pub fn zero_pad_blocked_images(x: Images<'_>, map: [usize; 2], pads: Pads, y: &mut ImagesMut<'_>) {
    zero_pad_pixels(x, map, pads, LANES, y);
}

/// Zero padding of planes whose pixels are `lanes` values each.
fn zero_pad_pixels(x: Images<'_>, map: [usize; 2], pads: Pads, lanes: usize, y: &mut ImagesMut<'_>) {
    y.par_iter_mut()
        .for_each(|(n, out)| zero_pad_image(x.get(n), map, pads, lanes, out));
}

/// One image of [`zero_pad_pixels`]: its `[h, w]` planes (pixels of `lanes` values) written into `out`
/// with `pads` of zeros around each.
pub(crate) fn zero_pad_image(x: &[f32], [h, w]: [usize; 2], pads: Pads, lanes: usize, out: &mut [f32]) {
    let out_w = w + pads.left + pads.right;
    let out_plane = (h + pads.top + pads.bottom) * out_w * lanes;
    out.fill(0.0);
    for (plane, src) in out.chunks_exact_mut(out_plane).zip(x.chunks_exact(h * w * lanes)) {
        for (row, src_row) in src.chunks_exact(w * lanes).enumerate() {
            plane[((row + pads.top) * out_w + pads.left) * lanes..][..w * lanes].copy_from_slice(src_row);
        }
    }
}

/// Adds the gradient of [`zero_pad_images`] to `dx`: the middle of each output-gradient plane.
pub fn zero_pad_backward_images(dy: Images<'_>, map: [usize; 2], pads: Pads, dx: &mut ImagesMut<'_>) {
    zero_pad_backward_pixels(dy, map, pads, 1, dx);
}

/// [`zero_pad_backward_images`] on blocked images.
pub fn zero_pad_backward_blocked_images(dy: Images<'_>, map: [usize; 2], pads: Pads, dx: &mut ImagesMut<'_>) {
    zero_pad_backward_pixels(dy, map, pads, LANES, dx);
}

fn zero_pad_backward_pixels(dy: Images<'_>, [h, w]: [usize; 2], pads: Pads, lanes: usize, dx: &mut ImagesMut<'_>) {
    let out_w = w + pads.left + pads.right;
    let out_plane = (h + pads.top + pads.bottom) * out_w * lanes;
    dx.par_iter_mut().for_each(|(n, dx)| {
        for (dx_plane, dy_plane) in dx
            .chunks_exact_mut(h * w * lanes)
            .zip(dy.get(n).chunks_exact(out_plane))
        {
            for (row, dx_row) in dx_plane.chunks_exact_mut(w * lanes).enumerate() {
                let src = &dy_plane[((row + pads.top) * out_w + pads.left) * lanes..][..w * lanes];
                dx_row.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
        }
    });
}

/// `y = residual + scale * branch`, then ReLU if `relu`, on batches of images.
pub fn add_scaled_images(residual: Images<'_>, branch: Images<'_>, scale: f32, relu: bool, y: &mut ImagesMut<'_>) {
    y.par_iter_mut().for_each(|(n, out)| {
        for ((o, &r), &b) in out.iter_mut().zip(residual.get(n)).zip(branch.get(n)) {
            *o = r + scale * b;
        }
        if relu {
            kernels::relu_in_place(out);
        }
    });
}

/// Adds `factor * dy` to `dx`: a residual add's gradient for one of its inputs (`1` for the residual,
/// `scale` for the branch).
pub fn add_scaled_backward_images(dy: Images<'_>, factor: f32, dx: &mut ImagesMut<'_>) {
    dx.par_iter_mut().for_each(|(n, dx)| {
        dx.iter_mut().zip(dy.get(n)).for_each(|(d, &g)| *d += factor * g);
    });
}

/// Copies every image of `part` into its channel slice of `y`, `offset` values into each image.
pub fn concat_part_images(part: Images<'_>, offset: usize, y: &mut ImagesMut<'_>) {
    for n in 0..part.count() {
        y.get_mut(n)[offset..offset + part.len()].copy_from_slice(part.get(n));
    }
}

/// Adds the gradient of one concat part to `dx`: its channel slice of `dy`, `offset` values in.
pub fn concat_part_backward_images(dy: Images<'_>, offset: usize, dx: &mut ImagesMut<'_>) {
    let len = dx.len();
    for n in 0..dy.count() {
        let src = &dy.get(n)[offset..offset + len];
        dx.get_mut(n).iter_mut().zip(src).for_each(|(d, s)| *d += s);
    }
}

/// `[n, c, h, w] -> [n, c*h*w]`, PyTorch's `nn.Flatten()`.
pub fn flatten(x: ArrayView4<f32>) -> Array2<f32> {
    let [n, c, h, w] = dims4(&x);
    let x = x.as_standard_layout().into_owned();
    x.into_shape_with_order([n, c * h * w])
        .expect("a contiguous array reshapes")
}

/// The gradient of [`flatten`]: `[n, c*h*w] -> input_shape`.
pub fn flatten_backward(dy: ArrayView2<f32>, input_shape: [usize; 4]) -> Result<Array4<f32>> {
    let [n, c, h, w] = input_shape;
    expect_shape("flatten output gradient", &[n, c * h * w], dy.shape())?;
    let dy = dy.as_standard_layout().into_owned();
    Ok(dy.into_shape_with_order(input_shape).expect("sizes checked above"))
}

/// Concatenates along channels (`torch.cat(xs, dim=1)`); every part must agree on `n`, `h` and `w`.
pub fn concat_channels(parts: &[ArrayView4<f32>]) -> Result<Array4<f32>> {
    let Some(first) = parts.first() else {
        return Err(Error::config("concat", "at least one input is needed"));
    };
    let [n, _, h, w] = dims4(first);
    for (i, p) in parts.iter().enumerate() {
        let [pn, pc, ph, pw] = dims4(p);
        if (pn, ph, pw) != (n, h, w) {
            return Err(Error::shape(
                &format!("concat input {i}"),
                format!("[{n}, c, {h}, {w}]"),
                format!("[{pn}, {pc}, {ph}, {pw}]"),
            ));
        }
    }
    let total: usize = parts.iter().map(|p| p.shape()[1]).sum();
    let mut y = Array4::zeros([n, total, h, w]);
    let y_slice = y.as_slice_mut().expect("fresh arrays are contiguous");
    // Each image's output is the parts' channel blocks one after another.
    let mut offset = 0;
    for part in parts {
        let block = part.shape()[1] * h * w;
        let data = contiguous(part);
        for (i, src) in data.chunks_exact(block.max(1)).take(n).enumerate() {
            y_slice[i * total * h * w + offset..][..block].copy_from_slice(src);
        }
        offset += block;
    }
    Ok(y)
}

/// The gradient of [`concat_channels`]: `dy` cut into parts of `channels[i]` channels each.
pub fn split_channels(dy: ArrayView4<f32>, channels: &[usize]) -> Result<Vec<Array4<f32>>> {
    let total: usize = channels.iter().sum();
    if dy.shape()[1] != total {
        return Err(Error::shape(
            "concat output gradient",
            format!("[n, {total}, h, w] (parts {channels:?})"),
            format!("{:?}", dy.shape()),
        ));
    }
    let mut start = 0;
    Ok(channels
        .iter()
        .map(|&c| {
            let part = dy
                .slice(s![.., start..start + c, .., ..])
                .as_standard_layout()
                .into_owned();
            start += c;
            part
        })
        .collect())
}

/// The residual add of Inception-ResNet: `y = residual + scale * branch` ([`add_scaled_images`]).
pub fn add_scaled(residual: ArrayView4<f32>, branch: ArrayView4<f32>, scale: f32) -> Result<Array4<f32>> {
    expect_shape("add branch", residual.shape(), branch.shape())?;
    let [n, c, h, w] = dims4(&residual);
    let (r, b) = (contiguous(&residual), contiguous(&branch));
    let mut y = Array4::zeros([n, c, h, w]);
    let len = c * h * w;
    add_scaled_images(
        Images::dense(&r, n, len),
        Images::dense(&b, n, len),
        scale,
        false,
        &mut ImagesMut::dense(y.as_slice_mut().expect("a new array"), n, len),
    );
    Ok(y)
}

/// The gradients of [`add_scaled`]: `(dy, scale * dy)` for the residual and the branch
/// ([`add_scaled_backward_images`]).
pub fn add_scaled_backward(dy: ArrayView4<f32>, scale: f32) -> (Array4<f32>, Array4<f32>) {
    let [n, c, h, w] = dims4(&dy);
    let g = contiguous(&dy);
    let len = c * h * w;
    let grads = [1.0, scale].map(|factor| {
        let mut dx = Array4::zeros([n, c, h, w]);
        let mut out = ImagesMut::dense(dx.as_slice_mut().expect("a new array"), n, len);
        add_scaled_backward_images(Images::dense(&g, n, len), factor, &mut out);
        dx
    });
    let [residual, branch] = grads;
    (residual, branch)
}
