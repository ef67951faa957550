//! The loss and accuracy curves of a training run as an SVG (plotters).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::train::EpochMetrics;

/// Draws training and test loss, and training and test accuracy, per epoch into `path`: red for
/// training, blue for test, each point marked so a run of one epoch shows too.
pub fn curves(path: &Path, epochs: &[EpochMetrics]) -> Result<()> {
    let train_loss: Vec<(f64, f64)> = epochs.iter().map(|e| (e.epoch as f64, e.train_loss)).collect();
    let test_loss: Vec<(f64, f64)> = epochs
        .iter()
        .filter_map(|e| Some((e.epoch as f64, e.test_loss?)))
        .collect();
    let train_acc: Vec<(f64, f64)> = epochs.iter().map(|e| (e.epoch as f64, e.train_acc)).collect();
    let test_acc: Vec<(f64, f64)> = epochs
        .iter()
        .filter_map(|e| Some((e.epoch as f64, e.test_acc?)))
        .collect();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (800, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(400);
        let last = epochs.iter().map(|e| e.epoch).max().unwrap_or(1).max(2) as f64;
        let max_loss = train_loss.iter().chain(&test_loss).map(|p| p.1).fold(0.1, f64::max);
        let panels = [
            (
                &left,
                "loss (red: train, blue: test)",
                max_loss * 1.1,
                [&train_loss, &test_loss],
            ),
            (
                &right,
                "accuracy (red: train, blue: test)",
                1.0,
                [&train_acc, &test_acc],
            ),
        ];
        for (area, caption, top, [train, test]) in panels {
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(40)
                .build_cartesian_2d(0.5..last + 0.5, 0.0..top)?;
            chart.configure_mesh().x_desc("epoch").draw()?;
            for (points, color) in [(train, RED), (test, BLUE)] {
                chart.draw_series(LineSeries::new(points.iter().copied(), color))?;
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::file(path.display(), format!("could not draw the curves: {e}")))
}
