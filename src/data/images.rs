//! Image files (PNG, JPEG) into a model's input, as torchvision prepares a PIL image: the channels
//! converted the way PIL converts (grey from RGB by ITU-R 601-2 luma, in PIL's fixed point), resized
//! ([`super::resample`], PIL's own arithmetic, so the bytes are PIL's), centre-cropped when the recipe
//! says so, and divided by 255 (`ToTensor`).

use std::path::{Path, PathBuf};

use super::resample::{self, Filter};
use crate::error::{Error, Result};

/// The file extensions [`image_files`] picks from a directory (any case).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// How an image is brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Resized to the input size, aspect ratio not kept (`Resize((h, w))`): how incept's runs resize
    /// their datasets.
    Stretch,
    /// The shorter side resized to `shorter_side`, the longer in proportion (`Resize(shorter_side)`),
    /// then the centre cut out at the input size (`CenterCrop`): the ImageNet recipe of torchvision's
    /// and timm's weights.
    ResizeThenCenterCrop {
        /// The shorter side's length after resizing.
        shorter_side: usize,
    },
}

/// The preprocessing an image file gets before normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRecipe {
    /// How the size is reached.
    pub fit: Fit,
    /// The resampling filter.
    pub filter: Filter,
}

impl ImageRecipe {
    /// incept's own: stretched to the input size, bilinear.
    pub const STRETCH: ImageRecipe = ImageRecipe {
        fit: Fit::Stretch,
        filter: Filter::Bilinear,
    };

    /// The recipe as a checkpoint records it: `stretch bilinear`, `crop 256 bicubic`.
    pub fn to_metadata(&self) -> String {
        let filter = match self.filter {
            Filter::Bilinear => "bilinear",
            Filter::Bicubic => "bicubic",
        };
        match self.fit {
            Fit::Stretch => format!("stretch {filter}"),
            Fit::ResizeThenCenterCrop { shorter_side } => format!("crop {shorter_side} {filter}"),
        }
    }

    /// Reads [`ImageRecipe::to_metadata`]'s form.
    pub fn from_metadata(text: &str) -> std::result::Result<ImageRecipe, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let filter = |name: &str| match name {
            "bilinear" => Ok(Filter::Bilinear),
            "bicubic" => Ok(Filter::Bicubic),
            _ => Err(format!("image_recipe: unknown filter {name:?} (bilinear or bicubic)")),
        };
        match words[..] {
            ["stretch", f] => Ok(ImageRecipe {
                fit: Fit::Stretch,
                filter: filter(f)?,
            }),
            ["crop", side, f] => Ok(ImageRecipe {
                fit: Fit::ResizeThenCenterCrop {
                    shorter_side: side
                        .parse()
                        .map_err(|_| format!("image_recipe: {side:?} is not a side length"))?,
                },
                filter: filter(f)?,
            }),
            _ => Err(format!(
                "image_recipe: expected \"stretch FILTER\" or \"crop SIDE FILTER\", found {text:?}"
            )),
        }
    }
}

/// Reads the image at `path` as `channels` (1: grey, 3: RGB) planes of `size`, values in [0, 1].
pub fn read_image(path: &Path, channels: usize, size: [usize; 2], recipe: ImageRecipe) -> Result<Vec<f32>> {
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
    let planes: Vec<u8> = match channels {
        1 => rgb.pixels().map(|p| luma(p.0)).collect(),
        3 => (0..3).flat_map(|c| rgb.pixels().map(move |p| p.0[c])).collect(),
        _ => {
            return Err(Error::config(
                "image",
                format!("images can feed models with 1 (grey) or 3 (RGB) input channels, this one has {channels}"),
            ));
        }
    };
    let bytes = match recipe.fit {
        Fit::Stretch => resample::resize(&planes, channels, [h, w], size, recipe.filter),
        Fit::ResizeThenCenterCrop { shorter_side } => {
            let resized = shorter_side_size([h, w], shorter_side);
            let planes = resample::resize(&planes, channels, [h, w], resized, recipe.filter);
            center_crop(&planes, channels, resized, size).ok_or_else(|| {
                Error::file(
                    path.display(),
                    format!(
                        "an image that covers {}x{} after its shorter side is resized to {shorter_side}, found {}x{}",
                        size[0], size[1], resized[0], resized[1]
                    ),
                )
            })?
        }
    };
    Ok(bytes.into_iter().map(|b| f32::from(b) / 255.0).collect())
}

/// torchvision's `Resize(shorter_side)`: the shorter side becomes `shorter_side`, the longer
/// `int(shorter_side * long / short)`.
fn shorter_side_size([h, w]: [usize; 2], shorter_side: usize) -> [usize; 2] {
    let longer = |long: usize, short: usize| (shorter_side as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        [longer(h, w), shorter_side]
    } else {
        [shorter_side, longer(w, h)]
    }
}

/// torchvision's `CenterCrop(size)`: the offset on each axis is `round((from - to) / 2)`, ties to
/// even as Python rounds; `None` when the image is smaller than the crop.
fn center_crop(planes: &[u8], channels: usize, [h, w]: [usize; 2], [ch, cw]: [usize; 2]) -> Option<Vec<u8>> {
    if h < ch || w < cw {
        return None;
    }
    let offset = |from: usize, to: usize| ((from - to) as f64 / 2.0).round_ties_even() as usize;
    let (top, left) = (offset(h, ch), offset(w, cw));
    Some(
        planes
            .chunks_exact(h * w)
            .take(channels)
            .flat_map(|plane| (top..top + ch).flat_map(move |y| plane[y * w + left..y * w + left + cw].iter().copied()))
            .collect(),
    )
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

    #[test]
    fn recipes_round_trip_through_metadata() {
        let crop = ImageRecipe {
            fit: Fit::ResizeThenCenterCrop { shorter_side: 341 },
            filter: Filter::Bicubic,
        };
        for recipe in [ImageRecipe::STRETCH, crop] {
            assert_eq!(ImageRecipe::from_metadata(&recipe.to_metadata()), Ok(recipe));
        }
        assert!(
            ImageRecipe::from_metadata("crop big bicubic")
                .unwrap_err()
                .contains("\"big\"")
        );
        assert!(
            ImageRecipe::from_metadata("stretch lanczos")
                .unwrap_err()
                .contains("lanczos")
        );
    }

    #[test]
    fn resize_and_crop_sizes_follow_torchvision() {
        // torchvision.transforms.functional._compute_resized_output_size
        assert_eq!(shorter_side_size([512, 512], 256), [256, 256]);
        assert_eq!(shorter_side_size([300, 451], 342), [342, 514]);
        assert_eq!(shorter_side_size([451, 300], 342), [514, 342]);
        // CenterCrop offsets: round(1.5) = 2, round(2.5) = 2 in Python.
        let plane: Vec<u8> = (0..6 * 7).map(|v| v as u8).collect();
        assert_eq!(
            center_crop(&plane, 1, [6, 7], [3, 4]),
            Some(vec![16, 17, 18, 19, 23, 24, 25, 26, 30, 31, 32, 33])
        );
        assert_eq!(center_crop(&plane, 1, [6, 7], [1, 2]), Some(vec![16, 17]));
        assert_eq!(center_crop(&plane, 1, [6, 7], [7, 2]), None);
    }
}
