//! `incept eval`: test loss and accuracy of saved weights.

use std::path::PathBuf;

use crate::args::{DataArgs, PrecisionArg, limit, load_data, resolve_model, resolve_size};
use incept::graph::Executor;
use incept::io::checkpoint::TensorFile;
use incept::models::{self, Model};
use incept::train;
use incept::{Error, Result};

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    /// The model (default: the one the checkpoint records, else the one whose state_dict the file holds).
    #[arg(long)]
    model: Option<String>,
    /// The weights: an incept checkpoint, or a PyTorch state_dict saved as safetensors.
    #[arg(long)]
    weights: PathBuf,
    /// Input size (square) the test images are resized to (default: the checkpoint's, else the
    /// model's native size).
    #[arg(long)]
    resize: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
    /// The arithmetic of the convolutions: f32, or bf16 products summed in float32 (no Winograd).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    #[command(flatten)]
    data: DataArgs,
}

/// `incept eval`: test loss and accuracy of saved weights.
pub(crate) fn eval_command(args: EvalArgs) -> Result<()> {
    let EvalArgs {
        model,
        weights,
        resize,
        batch,
        test_limit,
        precision,
        data,
    } = args;
    // One read of the weights: channels, classes, parameters and normalization all come from it.
    let file = TensorFile::read(&weights)?;
    let recorded = file.recorded(&weights)?;
    let model = resolve_model(model, &recorded, &file, &weights)?;
    let mut config = models::config_from_weights(&model, &file)?;
    config.size = resolve_size(resize, &recorded, &weights, config.size)?.0;
    if batch == 0 {
        return Err(Error::config("--batch", "--batch must be at least 1"));
    }
    let graph = models::build(&model, config)?;
    let (_, test_set) = load_data(&data, graph.output_len())?;
    let test_set = limit(test_set, test_limit, "--test-limit")?;
    // Planned for the batch that occurs: a batch beyond the test set is all of it.
    let capacity = batch.min(test_set.len()).max(1);
    // Checked with the parameters loaded, as Executor::new checks.
    let params = file.params_for(&graph, &weights)?;
    let [_, h, w] = graph.input_shape();
    let options = incept::graph::PlanOptions {
        precision: precision.precision(),
        ..Default::default()
    };
    Executor::check_memory(
        &graph,
        options,
        capacity,
        false,
        &format!("batch {batch} at {h}x{w}"),
        |k| match k {
            Some(k) => format!("try --batch {k}"),
            None => "try a smaller --resize".to_string(),
        },
    )?;
    let mut exec = Executor::new(Model { graph, params }, capacity)?;
    exec.set_plan_options(options)?;
    let normalization = file.normalization(&weights)?;
    let (loss, acc) = train::evaluate(&mut exec, &test_set, batch, normalization.as_ref())?;
    // float32 says nothing, as before bf16 existed.
    let arithmetic = match exec.plan().options.bf16_kernel() {
        Some(isa) => format!(", bf16 convolutions on {}", isa.name()),
        None => String::new(),
    };
    println!(
        "test loss {loss:.4}, test acc {acc:.4} ({} images{arithmetic})",
        test_set.len()
    );
    Ok(())
}
