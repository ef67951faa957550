//! The backward pass: every node's input, weight and bias gradients in exact reverse order of the
//! forward pass, each computed by its op in `ops/`.

use super::state::State;
use super::{Mode, images, images_mut, with_buffer};
use crate::error::{Error, Result};
use crate::graph::builder::{Graph, Layer};
use crate::ops::activation;
use crate::ops::conv;
use crate::ops::loss;
use crate::ops::pool::{self, max_pool_backward};
use crate::ops::shape;
use std::time::Instant;

impl State {
    /// See [`super::Executor::backward`].
    pub(super) fn backward(&mut self, graph: &Graph, params: &[Vec<f32>]) -> Result<()> {
        if self.labels.len() != self.batch || self.batch == 0 {
            return Err(Error::config(
                "executor",
                "backward needs a forward pass and a loss on the same batch first",
            ));
        }
        let batch = self.batch;
        if self.grads.is_empty() {
            self.grads = self
                .plan
                .buffer_image_len
                .iter()
                .map(|&len| vec![0.0; len * self.capacity])
                .collect();
        }
        for (g, &len) in self.grads.iter_mut().zip(&self.plan.buffer_image_len) {
            g[..len * batch].fill(0.0);
        }
        for g in &mut self.param_grads {
            g.fill(0.0);
        }
        let classes = graph.output_len();
        for (head, (node, weight)) in self.loss_heads(graph).into_iter().enumerate() {
            let out = self.plan.places[node];
            let grad = &mut self.grads[out.buffer][out.offset..];
            loss::backward_rows(
                &self.probabilities[head][..batch * classes],
                &self.labels,
                classes,
                self.loss_smoothing,
                grad,
                out.stride,
                weight,
            );
        }
        let State {
            acts,
            grads,
            argmax,
            bn_stats,
            param_grads,
            algos,
            plan,
            profile,
            mode,
            main_path,
            workspace,
            ..
        } = self;
        let places = &plan.places;
        for (id, node) in graph.nodes.iter().enumerate().rev() {
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
            let result: Result<()> = match &node.layer {
                Layer::Conv {
                    conv,
                    weight,
                    bias,
                    relu,
                } => (|| {
                    let g = conv.geometry([batch, c, h, w])?;
                    let algo = algos[id].expect("every convolution's algorithm is resolved when the executor is built");
                    if *relu {
                        let y = images(acts, p, batch);
                        activation::relu_mask_images(&mut images_mut(&mut grads[p.buffer], p, batch), y);
                    }
                    let x = images(acts, ip, batch);
                    let dy = images(grads, p, batch);
                    conv::backward_weight_images(&g, algo, x, dy, &mut param_grads[*weight], workspace);
                    if let Some(b) = bias {
                        conv::bias_grad(dy, g.out_channels, g.output_pixels(), &mut param_grads[*b]);
                    }
                    if input_needs_grad {
                        with_buffer(grads, ip.buffer, |grads, dx| {
                            let dy = images(grads, p, batch);
                            let dx = &mut images_mut(dx, ip, batch);
                            conv::backward_input_images(&g, algo, &params[*weight], dy, dx, workspace);
                        });
                    }
                    Ok(())
                })(),
                Layer::Linear { linear, weight, bias } => {
                    let dy = images(grads, p, batch);
                    linear.backward_weight_images(images(acts, ip, batch), dy, &mut param_grads[*weight]);
                    if let Some(b) = bias {
                        conv::bias_grad(dy, linear.out_features, 1, &mut param_grads[*b]);
                    }
                    if input_needs_grad {
                        with_buffer(grads, ip.buffer, |grads, dx| {
                            let dy = images(grads, p, batch);
                            linear.backward_input_images(&params[*weight], dy, &mut images_mut(dx, ip, batch));
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
                    let [dgamma, dbeta] = param_grads
                        .get_disjoint_mut([*gamma, *beta])
                        .expect("gamma and beta are distinct parameters");
                    let stats = &bn_stats[id];
                    if input_needs_grad {
                        with_buffer(grads, ip.buffer, |grads, dx| {
                            let dy = images(grads, p, batch);
                            let dx = &mut images_mut(dx, ip, batch);
                            bn.backward_images(x, dy, h * w, stats, &params[*gamma], (dgamma, dbeta), Some(dx));
                        });
                    } else {
                        let dy = images(grads, p, batch);
                        bn.backward_images(x, dy, h * w, stats, &params[*gamma], (dgamma, dbeta), None);
                    }
                    Ok(())
                }
                Layer::Dropout(dropout) => {
                    if input_needs_grad {
                        with_buffer(grads, ip.buffer, |grads, dx| {
                            dropout.backward_images(
                                &argmax[id],
                                images(grads, p, batch),
                                &mut images_mut(dx, ip, batch),
                            )
                        });
                    }
                    Ok(())
                }
                Layer::ZeroPad(pads) => {
                    if input_needs_grad {
                        with_buffer(grads, ip.buffer, |grads, dx| {
                            let dy = images(grads, p, batch);
                            shape::zero_pad_backward_images(dy, [h, w], *pads, &mut images_mut(dx, ip, batch))
                        });
                    }
                    Ok(())
                }
                Layer::MaxPool(pool) => (|| {
                    let g = pool.window.geometry("max_pool2d", [batch, c, h, w])?;
                    if input_needs_grad {
                        with_buffer(grads, ip.buffer, |grads, dx| {
                            max_pool_backward(&g, &argmax[id], images(grads, p, batch), &mut images_mut(dx, ip, batch))
                        });
                    }
                    Ok(())
                })(),
                Layer::AvgPool(pool) => (|| {
                    let g = pool.window.geometry("avg_pool2d", [batch, c, h, w])?;
                    if input_needs_grad {
                        with_buffer(grads, ip.buffer, |grads, dx| {
                            pool.backward_images(&g, images(grads, p, batch), &mut images_mut(dx, ip, batch))
                        });
                    }
                    Ok(())
                })(),
                Layer::AdaptiveAvgPool(output) => {
                    if input_needs_grad {
                        with_buffer(grads, ip.buffer, |grads, dx| {
                            let dy = images(grads, p, batch);
                            pool::adaptive_avg_pool_backward_images(dy, [h, w], *output, &mut images_mut(dx, ip, batch))
                        });
                    }
                    Ok(())
                }
                Layer::GlobalAvgPool => {
                    if input_needs_grad {
                        with_buffer(grads, ip.buffer, |grads, dx| {
                            let dy = images(grads, p, batch);
                            pool::global_avg_pool_backward_images(dy, h * w, &mut images_mut(dx, ip, batch))
                        });
                    }
                    Ok(())
                }
                Layer::Relu => {
                    if input_needs_grad {
                        let y = images(acts, p, batch);
                        with_buffer(grads, ip.buffer, |grads, dx| {
                            let dy = images(grads, p, batch);
                            activation::relu_backward_images(dy, y, &mut images_mut(dx, ip, batch))
                        });
                    }
                    Ok(())
                }
                Layer::AddScaled { scale, relu } => {
                    if *relu {
                        let y = images(acts, p, batch);
                        activation::relu_mask_images(&mut images_mut(&mut grads[p.buffer], p, batch), y);
                    }
                    for (&part, factor) in node.inputs.iter().zip([1.0, *scale]) {
                        if matches!(graph.nodes[part].layer, Layer::Input) {
                            continue;
                        }
                        let pp = places[part];
                        with_buffer(grads, pp.buffer, |grads, dx| {
                            let dy = images(grads, p, batch);
                            shape::add_scaled_backward_images(dy, factor, &mut images_mut(dx, pp, batch))
                        });
                    }
                    Ok(())
                }
                Layer::Concat => {
                    let mut offset = 0;
                    for (k, &part) in node.inputs.iter().enumerate() {
                        let pp = places[part];
                        let needs = !matches!(graph.nodes[part].layer, Layer::Input);
                        if !plan.in_place[id][k] && needs {
                            with_buffer(grads, pp.buffer, |grads, dx| {
                                let dy = images(grads, p, batch);
                                shape::concat_part_backward_images(dy, offset, &mut images_mut(dx, pp, batch))
                            });
                        }
                        offset += pp.len;
                    }
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
