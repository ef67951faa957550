//! Bilinear resizing as torchvision's `Resize` followed by `ToTensor`: half-pixel centres
//! (`align_corners=False`), edge pixels clamped; for byte images the result is rounded to bytes again
//! before dividing by 255, as the PIL path does. (PIL's fixed-point arithmetic may differ by one grey level
//! on a few pixels.)

/// For each output index: the two source indices and the weight of the second.
fn taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Resizes `src` (`channels` planes of `h x w`) into `dst` (`channels` planes of `oh x ow`).
pub fn resize_bilinear(
    src: &[f32],
    channels: usize,
    [h, w]: [usize; 2],
    dst: &mut [f32],
    [oh, ow]: [usize; 2],
    round_to_bytes: bool,
) {
    if [h, w] == [oh, ow] {
        dst.copy_from_slice(&src[..channels * h * w]);
        return;
    }
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    for (plane, out) in src
        .chunks_exact(h * w)
        .zip(dst.chunks_exact_mut(oh * ow))
        .take(channels)
    {
        for (oy, &(y0, y1, fy)) in ty.iter().enumerate() {
            for (ox, &(x0, x1, fx)) in tx.iter().enumerate() {
                let top = plane[y0 * w + x0] * (1.0 - fx) + plane[y0 * w + x1] * fx;
                let bottom = plane[y1 * w + x0] * (1.0 - fx) + plane[y1 * w + x1] * fx;
                let v = top * (1.0 - fy) + bottom * fy;
                out[oy * ow + ox] = if round_to_bytes {
                    (v * 255.0).round().clamp(0.0, 255.0) / 255.0
                } else {
                    v
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_matches_half_pixel_bilinear() {
        // 2 -> 4 along each axis: source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
        let src = [0.0, 1.0, 2.0, 3.0];
        let mut dst = [0.0; 16];
        resize_bilinear(&src, 1, [2, 2], &mut dst, [4, 4], false);
        let row0 = [0.0, 0.25, 0.75, 1.0];
        for (o, &expected) in row0.iter().enumerate() {
            assert!(
                (dst[o] - expected).abs() < 1e-6,
                "row 0 col {o}: {} vs {expected}",
                dst[o]
            );
        }
        // Column 0 moves by 2 per source row: 0, 0.5, 1.5, 2.
        let col0 = [0.0, 0.5, 1.5, 2.0];
        for (o, &expected) in col0.iter().enumerate() {
            assert!(
                (dst[o * 4] - expected).abs() < 1e-6,
                "row {o} col 0: {} vs {expected}",
                dst[o * 4]
            );
        }
        let constant = [0.4; 28 * 28];
        let mut big = vec![0.0; 96 * 96];
        resize_bilinear(&constant, 1, [28, 28], &mut big, [96, 96], false);
        assert!(big.iter().all(|&v| (v - 0.4).abs() < 1e-6));
    }
}
