//! `incept models`: the model table.

use incept::Result;
use incept::models;

/// `incept models`: the model table.
pub(crate) fn models_command() -> Result<()> {
    println!(
        "{:<20} {:>11} {:>7} {:>11} {:>11}  weights that load (besides incept checkpoints)",
        "model", "input", "classes", "parameters", "GFLOP/img"
    );
    for m in models::MODELS {
        let config = models::default_config(m.name)?;
        let graph = models::build(m.name, config)?;
        println!(
            "{:<20} {:>11} {:>7} {:>11} {:>11.3}  {}",
            m.name,
            format!("{}x{}x{}", config.in_channels, config.size[0], config.size[1]),
            config.classes,
            graph.parameter_count(),
            graph.flops_per_image() as f64 / 1e9,
            m.weight_names
        );
    }
    Ok(())
}
