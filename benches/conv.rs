//! Every distinct convolution of googlenet-d2l and one layer of each kernel kind of inception-v3, at
//! batch 128 and batch 1, forward and forward + backward, as the executor runs them: the direct path on
//! the blocked layout (weights packed once, outside the timed loop; a blocked input, except the stem,
//! which reads the NCHW graph input), with the bias and ReLU fused, and PyTorch's time for the same
//! layer beside it (`benches/torch_conv_layers.py`, conv + bias + ReLU, run by this bench in the same
//! run, after ours).
//!
//! Backward is what the executor's backward pass does for the layer: the ReLU mask fused with the bias
//! gradient, the weight gradient, and the input gradient except for the stem (the graph's input needs
//! none; PyTorch is asked for the same gradients). GFLOP/s count 2 per multiply-add: the forward's
//! FLOPs, and 2 or 3 times that for forward + backward. Times are medians of `REPS` runs (default 7).
//!
//! `cargo bench --bench conv` (PyTorch from `PEERS_PYTHON`, default `/tmp/peers-venv/bin/python`, the
//! venv `../shared/peers/setup.sh` makes); `cargo bench --bench conv -- 3x3` runs the layers whose name
//! contains `3x3`. `PARTS=1` also prints, per layer, the time of each part of the backward pass (the
//! ReLU mask with the bias gradient, the weight gradient, the input gradient) to stderr. Every
//! algorithm on the same layers: `cargo bench --bench conv_algorithms`.
//!
//! For the 3×3 stride-1 layers the table also gives Winograd F(2,3) and F(4,3) on the blocked layout
//! (`winograd_blocked`, same input, bias and ReLU): the forward, and forward + backward (the same ReLU
//! mask and bias gradient, Winograd's weight gradient and input gradient), in GF/s of the direct FLOPs
//! so the columns compare as times do. `PARTS=1` prints Winograd's gradient parts too. `PRECISION=bf16`
//! runs the direct path in bf16 (`incept::graph::Precision::Bf16`).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use incept::Padding;
use incept::blocked::{self, Halo, Layout};
use incept::graph::Layer;
use incept::microkernel::Isa;
use incept::models;
use incept::ops::conv::direct::{self, DirectWeights};
use incept::ops::conv::winograd_blocked::{self, WinogradWeights};
use incept::ops::conv::{self, Conv2d, ConvAlgo, ConvGeometry};
use incept::tensor::{Images, ImagesMut};
use incept::workspace::Workspace;

/// One layer to time: a readable name, the convolution and its input `[c, h, w]`, and whether its
/// input is the graph's (no input gradient, NCHW input).
struct LayerCase {
    name: String,
    conv: Conv2d,
    input: [usize; 3],
    graph_input: bool,
}

/// Every distinct (convolution, input shape) of googlenet-d2l, in network order.
fn googlenet_d2l() -> Vec<LayerCase> {
    let model = "googlenet-d2l";
    let graph = models::build(model, models::default_config(model).expect("known model")).expect("model builds");
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for node in &graph.nodes {
        let Layer::Conv { conv, .. } = &node.layer else {
            continue;
        };
        let source = &graph.nodes[node.inputs[0]];
        let [c, h, w] = source.shape;
        let g = conv.geometry([1, c, h, w]).expect("model geometry is valid");
        if !seen.insert(format!("{g}")) {
            continue;
        }
        let [kh, kw] = conv.kernel;
        out.push(LayerCase {
            name: format!(
                "d2l {} {kh}x{kw}/{} {}->{} @{h}",
                node.name, conv.stride[0], conv.in_channels, conv.out_channels
            ),
            conv: conv.clone(),
            input: [c, h, w],
            graph_input: matches!(source.layer, Layer::Input),
        });
    }
    out
}

/// An inception-v3 layer (torchvision's name): in, out, map size, kernel, stride, pads `[h, w]`.
type V3Layer = (&'static str, usize, usize, usize, [usize; 2], usize, [usize; 2]);

/// One layer of each kernel kind of inception-v3.
fn inception_v3() -> Vec<LayerCase> {
    let layers: [V3Layer; 8] = [
        ("Mixed_6b.branch7x7_2 1x7", 128, 128, 17, [1, 7], 1, [0, 3]),
        ("Mixed_6b.branch7x7_3 7x1", 128, 192, 17, [7, 1], 1, [3, 0]),
        ("Mixed_7b.branch3x3_2a 1x3", 384, 384, 8, [1, 3], 1, [0, 1]),
        ("Mixed_7b.branch3x3_2b 3x1", 384, 384, 8, [3, 1], 1, [1, 0]),
        ("Mixed_5b.branch3x3dbl_2 3x3", 64, 96, 35, [3, 3], 1, [1, 1]),
        ("Mixed_5b.branch5x5_2 5x5", 48, 64, 35, [5, 5], 1, [2, 2]),
        ("Mixed_6a.branch3x3 3x3/2", 288, 384, 35, [3, 3], 2, [0, 0]),
        ("Mixed_7b.branch1x1 1x1", 1280, 320, 8, [1, 1], 1, [0, 0]),
    ];
    layers
        .into_iter()
        .map(|(name, cin, cout, size, kernel, stride, [ph, pw])| LayerCase {
            name: format!("v3 {name} {cin}->{cout} @{size}"),
            conv: Conv2d::new(cin, cout, kernel)
                .with_stride([stride, stride])
                .with_padding(Padding::symmetric(ph, pw)),
            input: [cin, size, size],
            graph_input: false,
        })
        .collect()
}

fn geometry(case: &LayerCase, batch: usize) -> ConvGeometry {
    let [c, h, w] = case.input;
    case.conv.geometry([batch, c, h, w]).expect("valid geometry")
}

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.f32() - 0.5).collect()
}

fn median_ms(reps: usize, mut run: impl FnMut()) -> f64 {
    run();
    run();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// One layer's operands and buffers at one batch, and each pass the executor runs on it.
struct LayerRun {
    g: ConvGeometry,
    batch: usize,
    /// The stem reads the NCHW graph input and needs no input gradient; every other layer is blocked.
    graph_input: bool,
    in_layout: Layout,
    in_len: usize,
    out_len: usize,
    isa: Isa,
    x: Vec<f32>,
    weights: Vec<f32>,
    packed: DirectWeights,
    /// F(2,3) and F(4,3) weights, for a Winograd-eligible layer with a blocked input.
    winograd: Vec<WinogradWeights>,
    /// Their input-gradient weights.
    winograd_input: Vec<WinogradWeights>,
    ws: Workspace,
    y: Vec<f32>,
    dy: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
    dx: Vec<f32>,
}

impl LayerRun {
    fn new(case: &LayerCase, batch: usize, isa: Isa) -> LayerRun {
        let [c, h, w] = case.input;
        let g = geometry(case, batch);
        let in_layout = if case.graph_input {
            Layout::Nchw
        } else {
            Layout::Blocked
        };
        let in_len = in_layout.image_len([c, h, w]);
        let out_len = Layout::Blocked.image_len([g.out_channels, g.h.output, g.w.output]);
        let x_nchw = values(batch * g.input_image_len(), 1);
        let x = match in_layout {
            Layout::Nchw => x_nchw,
            Layout::Blocked => blocked::batch_from_nchw(&x_nchw, c, [h, w], Halo::default()),
        };
        let weights = values(case.conv.weight_shape().iter().product(), 2);
        let bias = values(g.out_channels, 3);
        let dy_nchw = values(batch * g.output_image_len(), 4);
        let winograd = if winograd_blocked::eligible(&g) && in_layout == Layout::Blocked {
            [2, 4]
                .map(|tile| WinogradWeights::new(&g, tile, &weights, Some(&bias)))
                .to_vec()
        } else {
            Vec::new()
        };
        let winograd_input = winograd
            .iter()
            .map(|w| WinogradWeights::for_input_grad(&g, w.tile(), &weights))
            .collect();
        LayerRun {
            winograd,
            winograd_input,
            // `PRECISION=bf16`: the direct path in bf16 (Winograd stays float32, as the plan keeps it).
            packed: DirectWeights::with_precision(
                &g,
                &weights,
                Some(&bias),
                (std::env::var("PRECISION").as_deref() == Ok("bf16")).then(incept::microkernel::Bf16Isa::best),
            ),
            ws: Workspace::with_size(conv::workspace(&g, ConvAlgo::Direct)),
            y: vec![0.0; batch * out_len],
            dy: blocked::batch_from_nchw(&dy_nchw, g.out_channels, [g.h.output, g.w.output], Halo::default()),
            dw: vec![0.0; weights.len()],
            db: vec![0.0; bias.len()],
            dx: vec![0.0; x.len()],
            g,
            batch,
            graph_input: case.graph_input,
            in_layout,
            in_len,
            out_len,
            isa,
            x,
            weights,
        }
    }

    /// The forward pass with bias and ReLU, into a blocked output.
    fn forward(&mut self) {
        let mut y = ImagesMut::dense(&mut self.y, self.batch, self.out_len);
        let x = Images::dense(&self.x, self.batch, self.in_len);
        direct::forward_images(
            &self.packed,
            x,
            self.in_layout,
            true,
            &mut y,
            Layout::Blocked,
            &mut self.ws,
            self.isa,
        );
    }

    /// The forward pass of Winograd weights `index` (0: F(2,3), 1: F(4,3)).
    fn winograd_forward(&mut self, index: usize) {
        let mut y = ImagesMut::dense(&mut self.y, self.batch, self.out_len);
        let x = Images::dense(&self.x, self.batch, self.in_len);
        self.winograd[index].forward_images(x, true, &mut y, &mut self.ws, self.isa);
    }

    /// Winograd's weight gradient with weights `index`.
    fn winograd_weight_grad(&mut self, index: usize) {
        let dy = Images::dense(&self.dy, self.batch, self.out_len);
        let x = Images::dense(&self.x, self.batch, self.in_len);
        self.winograd[index].add_weight_grad_images(x, dy, &mut self.dw, &mut self.ws, self.isa);
    }

    /// Winograd's input gradient with weights `index`.
    fn winograd_input_grad(&mut self, index: usize) {
        let dy = Images::dense(&self.dy, self.batch, self.out_len);
        let mut dx = ImagesMut::dense(&mut self.dx, self.batch, self.in_len);
        self.winograd_input[index].add_input_grad_images(dy, &mut dx, &mut self.ws, self.isa);
    }

    /// The ReLU mask fused with the bias gradient.
    fn mask_and_bias_grad(&mut self) {
        let mut dy = ImagesMut::dense(&mut self.dy, self.batch, self.out_len);
        let y = Images::dense(&self.y, self.batch, self.out_len);
        direct::relu_mask_and_bias_grad_blocked(&mut dy, y, self.g.out_channels, self.g.output_pixels(), &mut self.db);
    }

    fn weight_grad(&mut self) {
        let dy = Images::dense(&self.dy, self.batch, self.out_len);
        let x = Images::dense(&self.x, self.batch, self.in_len);
        direct::add_weight_grad_images(
            &self.packed,
            x,
            self.in_layout,
            dy,
            Layout::Blocked,
            &mut self.dw,
            &mut self.ws,
            self.isa,
        );
    }

    /// The input gradient, as the executor takes it: none for the stem, the flipped weights for a stride-1
    /// layer, im2col image by image for a strided one.
    fn input_grad(&mut self) {
        if self.graph_input {
            return;
        }
        let dy = Images::dense(&self.dy, self.batch, self.out_len);
        let mut dx = ImagesMut::dense(&mut self.dx, self.batch, self.in_len);
        if self.packed.has_direct_input_grad() {
            direct::add_input_grad_images(
                &self.packed,
                dy,
                Layout::Blocked,
                &mut dx,
                self.in_layout,
                &mut self.ws,
                self.isa,
            );
        } else {
            direct::add_input_grad_via_im2col(
                &self.g,
                &self.weights,
                dy,
                Layout::Blocked,
                &mut dx,
                self.in_layout,
                &mut self.ws,
                false,
            );
        }
    }
}

/// Our median milliseconds for `case` at `batch`: forward, forward + backward, and the Winograd
/// F(2,3) and F(4,3) forwards and forward + backward passes where the layer has them.
struct OurTimes {
    fwd: f64,
    fwd_bwd: f64,
    winograd: Option<[f64; 2]>,
    winograd_fwd_bwd: Option<[f64; 2]>,
}

fn time_ours(case: &LayerCase, batch: usize, reps: usize, isa: Isa) -> OurTimes {
    let mut run = LayerRun::new(case, batch, isa);
    let fwd = median_ms(reps, || run.forward());
    let winograd =
        (!run.winograd.is_empty()).then(|| [0, 1].map(|index| median_ms(reps, || run.winograd_forward(index))));
    let fwd_bwd = median_ms(reps, || {
        run.forward();
        run.mask_and_bias_grad();
        run.weight_grad();
        run.input_grad();
    });
    let winograd_fwd_bwd = (!run.winograd.is_empty()).then(|| {
        [0, 1].map(|index| {
            median_ms(reps, || {
                run.winograd_forward(index);
                run.mask_and_bias_grad();
                run.winograd_weight_grad(index);
                run.winograd_input_grad(index);
            })
        })
    });
    if std::env::var("PARTS").is_ok() {
        let f = run.g.forward_flops() as f64 / 1e9;
        for index in 0..run.winograd.len() {
            let wg = median_ms(reps, || run.winograd_weight_grad(index));
            let ig = median_ms(reps, || run.winograd_input_grad(index));
            eprintln!(
                "PARTS {} F({},3): weight grad {wg:.2} ms ({:.0} GF/s), input grad {ig:.2} ms ({:.0} GF/s)",
                case.name,
                run.winograd[index].tile(),
                f / wg * 1e3,
                f / ig * 1e3
            );
        }
        let mask = median_ms(reps, || run.mask_and_bias_grad());
        let wg = median_ms(reps, || run.weight_grad());
        let ig = median_ms(reps, || run.input_grad());
        let f = run.g.forward_flops() as f64 / 1e9;
        eprintln!(
            "PARTS {}: fwd {fwd:.2} ms ({:.0} GF/s), mask+bias {mask:.2} ms, weight grad {wg:.2} ms ({:.0} GF/s), input grad {ig:.2} ms ({:.0} GF/s)",
            case.name,
            f / fwd * 1e3,
            f / wg * 1e3,
            f / ig * 1e3
        );
    }
    OurTimes {
        fwd,
        fwd_bwd,
        winograd,
        winograd_fwd_bwd,
    }
}

/// PyTorch's median forward and forward + backward milliseconds per layer name, or why there are none.
fn time_torch(cases: &[(String, &LayerCase, usize)]) -> Result<serde_json::Value, String> {
    let python = std::env::var("PEERS_PYTHON").unwrap_or_else(|_| "/tmp/peers-venv/bin/python".into());
    let layers: Vec<serde_json::Value> = cases
        .iter()
        .map(|(name, case, batch)| {
            let [c, h, w] = case.input;
            let conv = &case.conv;
            let g = geometry(case, 1);
            // These models pad symmetrically, as PyTorch's `padding=(ph, pw)` does.
            assert_eq!(
                (g.h.pad_lo, g.w.pad_lo),
                (g.h.pad_hi, g.w.pad_hi),
                "{name}: asymmetric padding"
            );
            serde_json::json!({
                "name": name, "batch": batch, "cin": c, "cout": conv.out_channels, "h": h, "w": w,
                "kernel": conv.kernel, "stride": conv.stride,
                "pad": [g.h.pad_lo, g.w.pad_lo], "input_grad": !case.graph_input,
            })
        })
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_conv_layers.py");
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run {python} ({e}); set PEERS_PYTHON to a python with torch"))?;
    let input = serde_json::to_vec(&layers).expect("plain values");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(&input)
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{python} {script} failed ({})", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable output from {script}: {e}"))
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters layers by name.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let reps: usize = std::env::var("REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(7);
    let isa = Isa::best();
    let layers: Vec<LayerCase> = googlenet_d2l()
        .into_iter()
        .chain(inception_v3())
        .filter(|l| filter.iter().all(|f| l.name.contains(f.as_str())))
        .collect();
    let cases: Vec<(String, &LayerCase, usize)> = [128, 1]
        .into_iter()
        .flat_map(|batch| layers.iter().map(move |l| (format!("{} b{batch}", l.name), l, batch)))
        .collect();
    println!(
        "conv layers, {} threads, microkernel on {isa:?}, medians of {reps}; ratio = PyTorch's time / ours",
        incept::parallel::threads()
    );
    let ours: Vec<OurTimes> = cases
        .iter()
        .map(|(name, case, batch)| {
            let t = time_ours(case, *batch, reps, isa);
            eprintln!("{name}: ours {:.3} / {:.3} ms", t.fwd, t.fwd_bwd);
            t
        })
        .collect();
    let torch = time_torch(&cases);
    if let Err(why) = &torch {
        println!("PyTorch not measured: {why}");
    }
    println!(
        "{:<44} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "layer", "fwd GF/s", "torch", "ratio", "f+b GF/s", "torch", "ratio", "F(2,3)", "F(4,3)", "F2 f+b", "F4 f+b"
    );
    let (mut log_fwd, mut log_both, mut counted) = (0.0, 0.0, 0);
    for ((name, case, batch), times) in cases.iter().zip(&ours) {
        let (fwd, both) = (&times.fwd, &times.fwd_bwd);
        let flops = geometry(case, *batch).forward_flops() as f64;
        let both_flops = flops * if case.graph_input { 2.0 } else { 3.0 };
        let rate = |flops: f64, ms: f64| flops / (ms * 1e-3) / 1e9;
        let peer = torch.as_ref().ok().map(|t| {
            let ms = |key: &str| t[name.as_str()][key].as_f64().unwrap_or(f64::NAN);
            (ms("fwd_ms"), ms("fwdbwd_ms"))
        });
        let cell = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        let ratio = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        if let Some((tf, tb)) = peer {
            log_fwd += (tf / fwd).ln();
            log_both += (tb / both).ln();
            counted += 1;
        }
        println!(
            "{:<44} {:>9.1} {:>9} {:>6} {:>9.1} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8}",
            name,
            rate(flops, *fwd),
            cell(peer.map(|p| rate(flops, p.0))),
            ratio(peer.map(|p| p.0 / fwd)),
            rate(both_flops, *both),
            cell(peer.map(|p| rate(both_flops, p.1))),
            ratio(peer.map(|p| p.1 / both)),
            cell(times.winograd.map(|w| rate(flops, w[0]))),
            cell(times.winograd.map(|w| rate(flops, w[1]))),
            cell(times.winograd_fwd_bwd.map(|w| rate(both_flops, w[0]))),
            cell(times.winograd_fwd_bwd.map(|w| rate(both_flops, w[1]))),
        );
    }
    if counted > 0 {
        let n = counted as f64;
        println!(
            "geometric mean of PyTorch's time / ours over {counted} layer-batches: forward {:.2}, forward + backward {:.2}",
            (log_fwd / n).exp(),
            (log_both / n).exp()
        );
    }
}
