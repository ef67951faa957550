//! Training-time augmentation at the stored image size, before the resize: a random crop from the image
//! padded with zeros (torchvision's `RandomCrop(size, padding)`) and a random horizontal flip
//! (`RandomHorizontalFlip`). Each image's draws come from `(seed, epoch, image index)`, so a resumed run
//! sees the same augmented images as a straight one.

/// What to do to each training image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Augmentation {
    /// Zero padding on each side for the random crop; 0 turns the crop off.
    pub crop_padding: usize,
    /// Flip left-right with probability 1/2.
    pub flip: bool,
}

impl Augmentation {
    /// CIFAR-10's usual recipe: crop with 4 pixels of padding, and flip.
    pub fn crop_and_flip() -> Augmentation {
        Augmentation {
            crop_padding: 4,
            flip: true,
        }
    }

    /// True when it changes nothing.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.flip
    }

    /// The random draws for image `index` of epoch `epoch`.
    pub fn rng(seed: u64, epoch: usize, index: usize) -> fastrand::Rng {
        let mix =
            (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03) ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        fastrand::Rng::with_seed(seed ^ mix)
    }

    /// Writes the augmented `src` (`[c, h, w]`) into `dst` (same shape).
    pub fn apply(&self, src: &[f32], [c, h, w]: [usize; 3], dst: &mut [f32], rng: &mut fastrand::Rng) {
        let p = self.crop_padding;
        // Offsets of the crop inside the padded image, in [0, 2p].
        let (dy, dx) = (rng.usize(0..=2 * p), rng.usize(0..=2 * p));
        let flip = self.flip && rng.bool();
        for (plane, out) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(h * w)).take(c) {
            for y in 0..h {
                let sy = (y + dy).checked_sub(p).filter(|&sy| sy < h);
                for x in 0..w {
                    let x_read = if flip { w - 1 - x } else { x };
                    let sx = (x_read + dx).checked_sub(p).filter(|&sx| sx < w);
                    out[y * w + x] = match (sy, sx) {
                        (Some(sy), Some(sx)) => plane[sy * w + sx],
                        _ => 0.0,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_are_shifted_windows_of_the_zero_padded_image_and_flips_mirror_them() {
        let (h, w) = (5, 6);
        let src: Vec<f32> = (0..h * w).map(|i| i as f32 + 1.0).collect();
        let aug = Augmentation {
            crop_padding: 2,
            flip: true,
        };
        let (mut crops, mut flipped) = (0, 0);
        for index in 0..200 {
            let mut rng = Augmentation::rng(1, 0, index);
            let mut dst = vec![0.0; h * w];
            aug.apply(&src, [1, h, w], &mut dst, &mut rng);
            // Recover the draws the same way, then check every pixel against the definition.
            let mut rng = Augmentation::rng(1, 0, index);
            let (dy, dx, flip) = (rng.usize(0..=4), rng.usize(0..=4), rng.bool());
            for y in 0..h {
                for x in 0..w {
                    let xr = if flip { w - 1 - x } else { x };
                    let (py, px) = (y as isize + dy as isize - 2, xr as isize + dx as isize - 2);
                    let inside = (0..h as isize).contains(&py) && (0..w as isize).contains(&px);
                    let expected = if inside {
                        src[py as usize * w + px as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(dst[y * w + x], expected, "image {index} pixel ({y}, {x})");
                }
            }
            crops += ((dy, dx) != (2, 2)) as usize;
            flipped += flip as usize;
        }
        // Both draws actually vary.
        assert!(
            crops > 100 && (60..140).contains(&flipped),
            "crops {crops}, flips {flipped}"
        );
        let none = Augmentation::default();
        let mut dst = vec![0.0; h * w];
        none.apply(&src, [1, h, w], &mut dst, &mut Augmentation::rng(1, 0, 0));
        assert_eq!(dst, src);
    }
}
