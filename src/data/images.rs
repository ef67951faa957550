//! Image files (PNG, JPEG) into a model's input, as torchvision's `Grayscale` or `convert("RGB")`, then
//! `Resize((h, w))` and `ToTensor` prepare a PIL image: the channels converted the way PIL converts
//! (grey from RGB by ITU-R 601-2 luma, in PIL's fixed point), resized bilinearly with PIL's antialiasing
//! when shrinking ([`super::transforms::resize_bilinear`]), rounded to bytes and divided by 255.

use std::path::{Path, PathBuf};

use super::transforms::resize_bilinear;
use crate::error::{Error, Result};

/// The file extensions [`image_files`] picks from a directory (any case).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Reads the image at `path` as `channels` (1: grey, 3: RGB) planes of `size`, values in [0, 1].
pub fn read_image(path: &Path, channels: usize, size: [usize; 2]) -> Result<Vec<f32>> {
    let image = image::ImageReader::open(path)
        .map_err(|e| Error::file(path.display(), e))?
        .with_guessed_format()
        .map_err(|e| Error::file(path.display(), e))?
        .decode()
        .map_err(|e| {
            Error::file(
                path.display(),
                format!("a PNG or JPEG image, but it cannot be decoded: {e}"),
            )
        })?;
    let rgb = image.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let planes: Vec<f32> = match channels {
        1 => rgb.pixels().map(|p| f32::from(luma(p.0)) / 255.0).collect(),
        3 => (0..3)
            .flat_map(|c| rgb.pixels().map(move |p| f32::from(p.0[c]) / 255.0))
            .collect(),
        _ => {
            return Err(Error::config(
                "image",
                format!("images can feed models with 1 (grey) or 3 (RGB) input channels, this one has {channels}"),
            ));
        }
    };
    let mut out = vec![0.0; channels * size[0] * size[1]];
    resize_bilinear(&planes, channels, [h, w], &mut out, size, true);
    Ok(out)
}

/// PIL's `convert("L")`: `L = R·299/1000 + G·587/1000 + B·114/1000`, in its 16-bit fixed point.
fn luma([r, g, b]: [u8; 3]) -> u8 {
    let sum = u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000;
    (sum >> 16) as u8
}

/// The image files among `paths`: files as given, and each directory's PNG and JPEG files, sorted by name.
/// An error names a path that does not exist or a directory with no images.
pub fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::file(path.display(), e))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            if found.is_empty() {
                return Err(Error::file(
                    path.display(),
                    format!("a directory with images ({}), but it has none", EXTENSIONS.join(", ")),
                ));
            }
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(Error::file(path.display(), "no such file or directory"));
        }
    }
    Ok(files)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_is_pils_fixed_point_601_2() {
        assert_eq!(luma([255, 255, 255]), 255);
        assert_eq!(luma([0, 0, 0]), 0);
        // PIL: Image.new("RGB", (1, 1), (200, 100, 50)).convert("L").getpixel((0, 0)) == 124
        assert_eq!(luma([200, 100, 50]), 124);
        assert_eq!(luma([255, 0, 0]), 76);
        assert_eq!(luma([0, 255, 0]), 150);
        assert_eq!(luma([0, 0, 255]), 29);
    }
}
