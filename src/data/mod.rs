//! Datasets: MNIST/Fashion-MNIST IDX files, CIFAR-10 binary files, user data as .npy, the resize
//! transform, and a loader that prepares the next batch on another thread while the current one trains.

pub mod augment;
pub mod cifar;
pub mod idx;
pub mod loader;
pub mod npy;
pub mod transforms;

/// Images and labels held in memory at their stored size.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `count * channels * height * width` values, NCHW.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<usize>,
    /// `[channels, height, width]` per image.
    pub shape: [usize; 3],
    /// True when the values are bytes / 255 (IDX): resizing then rounds to bytes again, as the PIL path
    /// of torchvision's `Resize` + `ToTensor` does.
    pub from_bytes: bool,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The first `n` images (all if fewer).
    pub fn truncate(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.images.truncate(n * self.image_len());
        self.labels.truncate(n);
        self
    }
}
