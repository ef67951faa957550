//! `incept summary`: the per-block shape trace, parameters and FLOPs, and the plan's algorithms.

use crate::args::PrecisionArg;
use incept::graph::Layer;
use incept::graph::plan::{Layout, Plan, PlanOptions};
use incept::models;
use incept::ops::conv::{ConvAlgo, direct};
use incept::{Error, Result};

#[derive(clap::Args)]
pub(crate) struct SummaryArgs {
    /// The model (googlenet-d2l, googlenet-bn, inception-v2, inception-tf-cifar, inception-v3, googlenet, inception-v4, inception-resnet-v2).
    #[arg(long, default_value = "googlenet-d2l")]
    model: String,
    /// Summarize the network of these weights instead: an ONNX model's own graph (every node listed with
    /// its output shape), or the model a checkpoint records at its input size.
    #[arg(long, conflicts_with_all = ["model", "input"])]
    weights: Option<std::path::PathBuf>,
    /// Input as NxCxHxW, e.g. 1x1x96x96.
    #[arg(long)]
    input: Option<String>,
    /// Also list every convolution with the algorithm the plan chose for it.
    #[arg(long)]
    algos: bool,
    /// The arithmetic the plan is made for (with --algos).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
}

/// `incept summary`: shape trace, parameters, FLOPs and the plan's algorithms.
pub(crate) fn summary_command(args: SummaryArgs) -> Result<()> {
    let SummaryArgs {
        model,
        weights,
        input,
        algos,
        precision,
    } = args;
    let mut batch = 1;
    let graph = match &weights {
        Some(path) => {
            let (name, m, _) = crate::args::load_weights(None, path, None)?;
            if m.graph.trace.is_empty() {
                // An imported graph marks no blocks: every node, as the file's ops became ours.
                println!("{name}: {} nodes", m.graph.nodes.len());
                for node in &m.graph.nodes {
                    let [c, h, w] = node.shape;
                    println!("{:<40} {:<32} [{c}, {h}, {w}]", node.name, node.layer.describe());
                }
            }
            m.graph
        }
        None => graph_of(&model, input.as_deref(), &mut batch)?,
    };
    summarize(&graph, batch, algos, precision)
}

/// Model `model` at `--input` (`NxCxHxW`, whose N goes to `batch`), or at its native size.
fn graph_of(model: &str, input: Option<&str>, batch: &mut usize) -> Result<incept::graph::Graph> {
    let mut config = models::default_config(model)?;
    if let Some(spec) = input {
        let dims: Vec<usize> = spec
            .split('x')
            .map(|d| d.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::config("summary", format!("--input must look like 1x1x96x96, found {spec:?}")))?;
        let [n, c, h, w] = dims[..] else {
            return Err(Error::config(
                "summary",
                format!("--input needs 4 sizes NxCxHxW, found {spec:?}"),
            ));
        };
        *batch = n.max(1);
        config.in_channels = c;
        config.size = [h, w];
    }
    models::build(model, config)
}

fn summarize(graph: &incept::graph::Graph, batch: usize, algos: bool, precision: PrecisionArg) -> Result<()> {
    for line in models::shape_trace(graph) {
        println!("{line}");
    }
    println!("parameters: {}", graph.parameter_count());
    println!("GFLOP per image (forward): {:.4}", graph.flops_per_image() as f64 / 1e9);
    if algos {
        let options = PlanOptions {
            precision: precision.precision("summary")?,
            ..PlanOptions::default()
        };
        let plan = Plan::for_capacity(graph, options, batch)?;
        let total = graph.flops_per_image() as f64;
        println!(
            "{:<14} {:<26} {:>9} {:<13} {:<13} {:<15} {:<24} {:>6}",
            "conv", "op", "output", "inference", "training", "layout in->out", "arithmetic", "FLOPs"
        );
        for (id, (node, algo)) in graph.nodes.iter().zip(&plan.conv_algos).enumerate() {
            let Some(algo) = algo else { continue };
            let [_, h, w] = node.shape;
            let layouts = format!("{:?}->{:?}", plan.layouts[node.inputs[0]], plan.layouts[id]);
            let algorithm = |training| match plan.winograd_tile(id, training) {
                Some(tile) => format!("{algo:?}+F({tile},3)"),
                None => format!("{algo:?}"),
            };
            // What the convolution multiplies in, on which instruction set (see `Precision`).
            let few_channels = match &node.layer {
                Layer::Conv { conv, .. } => {
                    let [c, ih, iw] = graph.nodes[node.inputs[0]].shape;
                    direct::few_channels(&conv.geometry([1, c, ih, iw])?)
                }
                _ => false,
            };
            let arithmetic = match (algo, plan.options.bf16_kernel()) {
                (ConvAlgo::Direct, Some(bf16)) if !few_channels => format!("bf16 {}", bf16.name()),
                (ConvAlgo::Direct, _) => format!("f32 {:?}", plan.options.isa),
                _ => "f32 GEMM".to_string(),
            };
            println!(
                "{:<14} {:<26} {:>9} {:<13} {:<13} {:<15} {:<24} {:>5.1}%",
                node.name,
                node.layer.describe(),
                format!("{h}x{w}"),
                algorithm(false),
                algorithm(true),
                layouts,
                arithmetic,
                100.0 * graph.node_flops(node) as f64 / total
            );
        }
        let blocked = plan.layouts.iter().filter(|&&l| l == Layout::Blocked).count();
        println!(
            "{blocked} of {} nodes keep their output in the blocked layout; the microkernel runs on {:?}",
            graph.nodes.len(),
            plan.options.isa
        );
        if plan
            .winograd_tiles
            .iter()
            .chain(&plan.winograd_training_tiles)
            .any(Option::is_some)
        {
            println!(
                "Direct+F(m,3): at batch {batch}, Winograd F(m×m, 3×3) on the microkernel (in training: forward, input and weight gradients)"
            );
        }
    }
    Ok(())
}
