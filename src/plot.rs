//! The loss and accuracy curves of a training run as an SVG (plotters).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::train::EpochMetrics;

/// Draws training loss, training accuracy and test accuracy per epoch into `path`.
pub fn curves(path: &Path, epochs: &[EpochMetrics]) -> Result<()> {
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (800, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(400);
        let last = epochs.iter().map(|e| e.epoch).max().unwrap_or(1).max(2) as f64;
        let max_loss = epochs.iter().map(|e| e.train_loss).fold(0.1, f64::max);
        let mut loss = ChartBuilder::on(&left)
            .caption("training loss", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(1.0..last, 0.0..max_loss * 1.1)?;
        loss.configure_mesh().x_desc("epoch").draw()?;
        loss.draw_series(LineSeries::new(
            epochs.iter().map(|e| (e.epoch as f64, e.train_loss)),
            &RED,
        ))?;
        let mut acc = ChartBuilder::on(&right)
            .caption("accuracy (red: train, blue: test)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(1.0..last, 0.0..1.0)?;
        acc.configure_mesh().x_desc("epoch").draw()?;
        acc.draw_series(LineSeries::new(
            epochs.iter().map(|e| (e.epoch as f64, e.train_acc)),
            &RED,
        ))?;
        acc.draw_series(LineSeries::new(
            epochs.iter().filter_map(|e| Some((e.epoch as f64, e.test_acc?))),
            &BLUE,
        ))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::file(path.display(), format!("could not draw the curves: {e}")))
}
