//! Ops that move values without arithmetic (flatten, channel concat) and the residual add.

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, Zip, s};

use crate::error::{Error, Result, expect_shape};
use crate::tensor::{contiguous, dims4};

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

/// The residual add of Inception-ResNet: `y = residual + scale * branch`.
pub fn add_scaled(residual: ArrayView4<f32>, branch: ArrayView4<f32>, scale: f32) -> Result<Array4<f32>> {
    expect_shape("add branch", residual.shape(), branch.shape())?;
    Ok(Zip::from(&residual).and(&branch).map_collect(|&r, &b| r + scale * b))
}

/// The gradients of [`add_scaled`]: `(dy, scale * dy)` for the residual and the branch.
pub fn add_scaled_backward(dy: ArrayView4<f32>, scale: f32) -> (Array4<f32>, Array4<f32>) {
    (dy.as_standard_layout().into_owned(), dy.mapv(|d| scale * d))
}
