//! The backward pass: every node's input, weight and bias gradients in exact reverse order of the
//! forward pass, each computed by its op in `ops/`.

use super::state::{self, State, close_gradient, open_gradient};
use super::sync_bn::{BatchNormInput, SyncBn};
use super::{Mode, images, images_mut, two_mut, with_buffer};
use crate::blocked;
use crate::distributed::Cluster;
use crate::error::{Error, Result};
use crate::graph::builder::{Graph, Layer};
use crate::graph::plan::{Layout, Place};
use crate::ops::activation;
use crate::ops::conv;
use crate::ops::conv::direct;
use crate::ops::loss;
use crate::ops::pool::{self, max_pool_backward};
use crate::ops::pool_blocked;
use crate::ops::shape;
use crate::tensor::{Images, ImagesMut};
use std::time::Instant;

impl State {
    /// See [`super::Executor::backward`].
    pub(super) fn backward(&mut self, graph: &Graph, params: &[Vec<f32>], sync: Option<&dyn Cluster>) -> Result<()> {
        if self.labels.len() != self.batch || self.batch == 0 {
            return Err(Error::config(
                "executor",
                "backward needs a forward pass and a loss on the same batch first",
            ));
        }
        let batch = self.batch;
        // Gradient buffers open (zeroed) as the pass reaches them and close once read (GradientSlots).
        self.reset_gradient_slots()?;
        for &b in &self.gradient_slots.from_start {
            let len = self.plan.buffer_image_len[b];
            open_gradient(
                &self.gradient_slots,
                &mut self.grad_store,
                &mut self.grads,
                b,
                len,
                batch,
            );
        }
        for g in &mut self.param_grads {
            g.fill(0.0);
        }
        let (classes, smoothing, loss_images) = (graph.output_len(), self.loss_smoothing(), self.loss_images);
        for (head, (node, weight)) in self.loss_heads(graph).into_iter().enumerate() {
            let out = self.plan.places[node];
            let grad = &mut self.grads[out.buffer][out.offset..];
            loss::backward_rows(
                &self.probabilities[head][..batch * classes],
                &self.labels,
                classes,
                smoothing,
                grad,
                out.stride,
                loss::MeanOver {
                    weight,
                    images: loss_images,
                },
            );
        }
        let State {
            acts,
            grads,
            argmax,
            bn_stats,
            param_grads,
            packed,
            plan,
            profile,
            mode,
            main_path,
            workspace,
            gradient_groups,
            tree,
            tree_f64,
            loss_images,
            gradient_slots,
            grad_store,
            ..
        } = self;
        let groups = &gradient_groups[..];
        let places = &plan.places;
        for (id, node) in graph.nodes.iter().enumerate().rev() {
            // The buffers whose span ended with the previous step close; this step's open.
            for &b in gradient_slots.closes.get(id + 1).into_iter().flatten() {
                close_gradient(gradient_slots, grad_store, grads, b);
            }
            for &b in &gradient_slots.opens[id] {
                open_gradient(gradient_slots, grad_store, grads, b, plan.buffer_image_len[b], batch);
            }
            let p = places[id];
            let Some(&input) = node.inputs.first() else { continue };
            // An auxiliary head skipped by an eval forward has nothing to pass back.
            if *mode == Mode::Eval && !main_path[id] {
                continue;
            }
            let started = profile.is_some().then(Instant::now);
            let ip = places[input];
            // The graph input needs no gradient: its producer skips computing one.
            let input_needs_grad = !matches!(graph.nodes[input].layer, Layer::Input);
            let [c, h, w] = graph.nodes[input].shape;
            let (in_layout, out_layout) = (plan.layouts[input], plan.layouts[id]);
            let result: Result<()> = match &node.layer {
                Layer::Conv {
                    conv,
                    weight,
                    bias,
                    relu,
                } => (|| {
                    let g = conv.geometry([batch, c, h, w])?;
                    let algo = plan.conv_algos[id]
                        .expect("every convolution's algorithm is resolved when the executor is built");
                    let (channels, pixels) = (g.out_channels, g.output_pixels());
                    // On the blocked layout, the ReLU mask and the bias gradient share one pass over dy
                    // (when the batch is one gradient group).
                    let fused_bias = match (relu, bias, out_layout) {
                        (true, Some(b), Layout::Blocked) if groups.len() <= 1 => {
                            let (y, db) = (images(acts, p, batch), &mut param_grads[*b]);
                            let mut dy = images_mut(&mut grads[p.buffer], p, batch);
                            direct::relu_mask_and_bias_grad_blocked(&mut dy, y, channels, pixels, db);
                            true
                        }
                        _ => false,
                    };
                    if *relu && !fused_bias {
                        let y = images(acts, p, batch);
                        activation::relu_mask_images(&mut images_mut(&mut grads[p.buffer], p, batch), y);
                    }
                    let x = images(acts, ip, batch);
                    let dy = images(grads, p, batch);
                    let winograd = packed.winograd_training(id);
                    let (dw, packed) = (&mut param_grads[*weight], packed.direct[id].as_ref());
                    let isa = plan.options.isa;
                    tree.add_over_groups(groups, dw, |images, dw| {
                        let (x, dy) = (x.range(images.clone()), dy.range(images.clone()));
                        match (winograd, packed) {
                            (Some((forward, _)), _) => forward.add_weight_grad_images(x, dy, dw, workspace, isa),
                            (None, Some(packed)) => {
                                direct::add_weight_grad_images(packed, x, in_layout, dy, out_layout, dw, workspace, isa)
                            }
                            (None, None) => {
                                let g = conv::ConvGeometry {
                                    batch: images.len(),
                                    ..g
                                };
                                conv::backward_weight_images(&g, algo, x, dy, dw, workspace)
                            }
                        }
                    });
                    match bias {
                        Some(b) if !fused_bias => {
                            tree.add_over_groups(groups, &mut param_grads[*b], |images, db| {
                                let dy = dy.range(images);
                                match out_layout {
                                    Layout::Blocked => direct::bias_grad_blocked(dy, channels, pixels, db),
                                    Layout::Nchw => conv::bias_grad(dy, channels, pixels, db),
                                }
                            });
                        }
                        _ => {}
                    }
                    if input_needs_grad {
                        add_input_grad(grads, p, ip, batch, |dy, dx| match (winograd, packed) {
                            (Some((_, input_grad)), _) => input_grad.add_input_grad_images(dy, dx, workspace, isa),
                            (None, Some(packed)) if packed.has_direct_input_grad() => {
                                direct::add_input_grad_images(packed, dy, out_layout, dx, in_layout, workspace, isa)
                            }
                            // A strided direct convolution on blocked activations.
                            (None, Some(_)) if (in_layout, out_layout) != (Layout::Nchw, Layout::Nchw) => {
                                let (w, bf16) = (&params[*weight], packed.is_some_and(|p| p.bf16_isa().is_some()));
                                direct::add_input_grad_via_im2col(&g, w, dy, out_layout, dx, in_layout, workspace, bf16)
                            }
                            _ => conv::backward_input_images(&g, algo, &params[*weight], dy, dx, workspace),
                        });
                    }
                    Ok(())
                })(),
                Layer::Linear { linear, weight, bias } => {
                    let (x, dy) = (images(acts, ip, batch), images(grads, p, batch));
                    tree.add_over_groups(groups, &mut param_grads[*weight], |images, dw| {
                        linear.backward_weight_images(x.range(images.clone()), dy.range(images), dw)
                    });
                    if let Some(b) = bias {
                        tree.add_over_groups(groups, &mut param_grads[*b], |images, db| {
                            conv::bias_grad(dy.range(images), linear.out_features, 1, db)
                        });
                    }
                    if input_needs_grad {
                        // Per gradient group, as the forward pass ran it.
                        add_input_grad(grads, p, ip, batch, |dy, dx| {
                            if groups.len() > 1 {
                                for g in groups {
                                    let mut dx = dx.range_mut(g.clone());
                                    linear.backward_input_images(&params[*weight], dy.range(g.clone()), &mut dx);
                                }
                            } else {
                                linear.backward_input_images(&params[*weight], dy, dx)
                            }
                        });
                    }
                    Ok(())
                }
                Layer::BatchNorm {
                    bn, gamma, beta, relu, ..
                } => {
                    if *relu {
                        let y = images(acts, p, batch);
                        activation::relu_mask_images(&mut images_mut(&mut grads[p.buffer], p, batch), y);
                    }
                    let x = images(acts, ip, batch);
                    // Split borrows: the two parameter gradients are distinct vectors.
                    let (dgamma, dbeta) = two_mut(param_grads, *gamma, *beta);
                    let stats = &bn_stats[id];
                    let gamma = &params[*gamma];
                    let layout = in_layout;
                    if let (Some(cluster), true) = (sync, stats.batch_statistics) {
                        let mut sync = SyncBn {
                            cluster,
                            images: *loss_images,
                            groups,
                            tree: tree_f64,
                            tree_f32: tree,
                        };
                        let input = BatchNormInput {
                            bn,
                            x,
                            pixels: h * w,
                            layout,
                        };
                        let param_grads = (&mut dgamma[..], &mut dbeta[..]);
                        if input_needs_grad {
                            with_buffer(grads, ip.buffer, |bufs, dx| {
                                let (dy, mut dx) = (images(bufs, p, batch), images_mut(dx, ip, batch));
                                sync.backward(input, dy, stats, gamma, param_grads, Some(&mut dx))
                            })
                        } else {
                            sync.backward(input, images(grads, p, batch), stats, gamma, param_grads, None)
                        }
                    } else {
                        if input_needs_grad {
                            add_input_grad(grads, p, ip, batch, |dy, dx| {
                                let (grads, dx) = ((&mut dgamma[..], &mut dbeta[..]), Some(dx));
                                bn.backward_images(x, dy, h * w, layout, stats, gamma, grads, dx)
                            });
                        } else {
                            let dy = images(grads, p, batch);
                            bn.backward_images(x, dy, h * w, layout, stats, gamma, (dgamma, dbeta), None)
                        }
                        Ok(())
                    }
                }
                Layer::AddScaled { scale, relu } => {
                    if *relu {
                        let y = images(acts, p, batch);
                        activation::relu_mask_images(&mut images_mut(&mut grads[p.buffer], p, batch), y);
                    }
                    for (&part, factor) in node.inputs.iter().zip([1.0, *scale]) {
                        if !matches!(graph.nodes[part].layer, Layer::Input) {
                            add_input_grad(grads, p, places[part], batch, |dy, dx| {
                                shape::add_scaled_backward_images(dy, factor, dx)
                            });
                        }
                    }
                    Ok(())
                }
                Layer::Concat => {
                    let mut offset = 0;
                    for (k, &part) in node.inputs.iter().enumerate() {
                        let pp = places[part];
                        let needs = !matches!(graph.nodes[part].layer, Layer::Input);
                        if !plan.in_place[id][k] && needs {
                            add_input_grad(grads, p, pp, batch, |dy, dx| {
                                shape::concat_part_backward_images(dy, offset, dx)
                            });
                        }
                        offset += pp.len;
                    }
                    Ok(())
                }
                // The ops below have no parameters: only the input gradient, when the input needs one.
                _ if !input_needs_grad => Ok(()),
                Layer::Dropout(dropout) => {
                    add_input_grad(grads, p, ip, batch, |dy, dx| {
                        dropout.backward_images(&argmax[id], dy, dx)
                    });
                    Ok(())
                }
                Layer::ZeroPad(pads) => {
                    add_input_grad(grads, p, ip, batch, |dy, dx| match out_layout {
                        Layout::Blocked => shape::zero_pad_backward_blocked_images(dy, [h, w], *pads, dx),
                        Layout::Nchw => shape::zero_pad_backward_images(dy, [h, w], *pads, dx),
                    });
                    Ok(())
                }
                Layer::MaxPool(pool) => pool.window.geometry("max_pool2d", [batch, c, h, w]).map(|g| {
                    add_input_grad(grads, p, ip, batch, |dy, dx| match out_layout {
                        Layout::Blocked if pool_blocked::offsets_fit(&g) => {
                            let offsets = state::as_u16(&argmax[id]);
                            pool_blocked::max_pool_backward_blocked_offsets_images(&g, offsets, dy, dx)
                        }
                        Layout::Blocked => pool_blocked::max_pool_backward_blocked_images(&g, &argmax[id], dy, dx),
                        Layout::Nchw => max_pool_backward(&g, &argmax[id], dy, dx),
                    })
                }),
                Layer::AvgPool(pool) => pool.window.geometry("avg_pool2d", [batch, c, h, w]).map(|g| {
                    add_input_grad(grads, p, ip, batch, |dy, dx| match out_layout {
                        Layout::Blocked => pool_blocked::avg_pool_backward_blocked_images(pool, &g, dy, dx),
                        Layout::Nchw => pool.backward_images(&g, dy, dx),
                    })
                }),
                Layer::AdaptiveAvgPool(output) => {
                    add_input_grad(grads, p, ip, batch, |dy, dx| {
                        pool::adaptive_avg_pool_backward_images(dy, [h, w], *output, dx)
                    });
                    Ok(())
                }
                Layer::GlobalAvgPool => {
                    add_input_grad(grads, p, ip, batch, |dy, dx| match in_layout {
                        Layout::Blocked => pool_blocked::global_avg_pool_backward_blocked_images(dy, c, h * w, dx),
                        Layout::Nchw => pool::global_avg_pool_backward_images(dy, h * w, dx),
                    });
                    Ok(())
                }
                Layer::Relu => {
                    let y = images(acts, p, batch);
                    add_input_grad(grads, p, ip, batch, |dy, dx| {
                        activation::relu_backward_images(dy, y, dx)
                    });
                    Ok(())
                }
                // A flatten that reorders passes its gradient back into the blocked layout; one that
                // shares its input's memory shares the gradient too.
                Layer::Flatten if plan.flatten_reorders(graph, id) => {
                    add_input_grad(grads, p, ip, batch, |dy, dx| {
                        for (n, dx) in dx.iter_mut() {
                            blocked::add_nchw_to_blocked(dy.get(n), c, [h, w], dx);
                        }
                    });
                    Ok(())
                }
                Layer::Flatten | Layer::Input => Ok(()),
            };
            result.map_err(|e| e.in_node(&node.name))?;
            if let (Some(t), Some(profile)) = (started, profile.as_mut()) {
                profile[id].backward += t.elapsed();
            }
        }
        Ok(())
    }
}

/// Adds a node's input gradient into its input's gradient buffer (at place `input`) through
/// `add(dy, dx)`, where `dy` is the gradient of the node's output (at place `output`).
fn add_input_grad(
    grads: &mut [Vec<f32>],
    output: Place,
    input: Place,
    batch: usize,
    add: impl FnOnce(Images<'_>, &mut ImagesMut<'_>),
) {
    with_buffer(grads, input.buffer, |grads, dx| {
        add(images(grads, output, batch), &mut images_mut(dx, input, batch))
    });
}
