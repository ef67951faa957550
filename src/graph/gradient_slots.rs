//! Which activation-gradient buffers share memory in the backward pass.
//!
//! The backward pass visits the nodes in reverse order. The gradient of a buffer (see
//! [`super::plan::Place`]) is needed from the first node that adds into it (its last reader in forward
//! order, or the loss for an output) down to the last node that reads it (the first node that writes
//! the buffer in forward order). Buffers whose spans do not meet take turns in one *slot*: a slot is
//! zeroed when a buffer opens in it, and handed on when that buffer's span ends. This is PyTorch's
//! rule for non-leaf tensors (their gradients are freed once used, unless `retain_grad`); an executor
//! that keeps every node's gradient for inspection ([`super::Executor::set_keep_node_grads`]) gives
//! each buffer its own slot instead. Slots change no value: each buffer starts from zero and is summed
//! into by the same nodes in the same order either way.

use super::builder::Graph;
use super::plan::Plan;

/// The slots of a graph's gradient buffers, and when each buffer opens and closes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GradientSlots {
    /// Per buffer: its slot (`None`: no node ever touches its gradient).
    pub slot: Vec<Option<usize>>,
    /// Per slot: values per image (its largest buffer's).
    pub slot_image_len: Vec<usize>,
    /// Buffers open before the loss writes its gradient: the outputs', and with
    /// [`GradientSlots::unshared`] every one.
    pub from_start: Vec<usize>,
    /// Per node: the buffers that open (zeroed) just before its backward step.
    pub opens: Vec<Vec<usize>>,
    /// Per node: the buffers whose span ends with its backward step.
    pub closes: Vec<Vec<usize>>,
}

impl GradientSlots {
    /// Every buffer in its own slot, open for the whole backward pass.
    pub fn unshared(graph: &Graph, plan: &Plan) -> GradientSlots {
        let buffers = plan.buffer_image_len.len();
        GradientSlots {
            slot: (0..buffers).map(Some).collect(),
            slot_image_len: plan.buffer_image_len.clone(),
            from_start: (0..buffers).collect(),
            opens: vec![Vec::new(); graph.nodes.len()],
            closes: vec![Vec::new(); graph.nodes.len()],
        }
    }

    /// Buffers whose spans do not meet share slots: in the order they open, each takes the free slot
    /// that fits it most tightly (or grows the largest free one, or opens a new one).
    pub fn shared(graph: &Graph, plan: &Plan) -> GradientSlots {
        let nodes = graph.nodes.len();
        let buffers = plan.buffer_image_len.len();
        // Steps are node indices; `nodes` stands for "before the first step" (the loss).
        let mut span: Vec<Option<(usize, usize)>> = vec![None; buffers];
        let mut touch = |buffer: usize, step: usize| {
            let s = span[buffer].get_or_insert((step, step));
            *s = (s.0.min(step), s.1.max(step));
        };
        for (id, node) in graph.nodes.iter().enumerate() {
            if node.inputs.is_empty() {
                continue;
            }
            touch(plan.places[id].buffer, id);
            for &input in &node.inputs {
                touch(plan.places[input].buffer, id);
            }
        }
        for &head in std::iter::once(&graph.output).chain(graph.aux_outputs.iter().map(|(id, _)| id)) {
            touch(plan.places[head].buffer, nodes);
        }
        let mut order: Vec<usize> = (0..buffers).filter(|&b| span[b].is_some()).collect();
        // By opening step, latest first (the backward order); larger buffers first among equals.
        order.sort_by_key(|&b| {
            (
                std::cmp::Reverse(span[b].map(|s| s.1)),
                std::cmp::Reverse(plan.buffer_image_len[b]),
            )
        });
        let mut slots = GradientSlots {
            slot: vec![None; buffers],
            slot_image_len: Vec::new(),
            from_start: Vec::new(),
            opens: vec![Vec::new(); nodes],
            closes: vec![Vec::new(); nodes],
        };
        // Per slot: the step its current buffer closes at (free for a buffer opening at a lower step).
        let mut closes_at: Vec<usize> = Vec::new();
        for b in order {
            let (first, last) = span[b].expect("only touched buffers");
            let len = plan.buffer_image_len[b];
            let free = (0..closes_at.len()).filter(|&s| closes_at[s] > last);
            let fitting = free.clone().filter(|&s| slots.slot_image_len[s] >= len);
            let chosen = fitting
                .min_by_key(|&s| slots.slot_image_len[s])
                .or_else(|| free.max_by_key(|&s| slots.slot_image_len[s]));
            let s = chosen.unwrap_or_else(|| {
                slots.slot_image_len.push(0);
                closes_at.push(0);
                closes_at.len() - 1
            });
            slots.slot_image_len[s] = slots.slot_image_len[s].max(len);
            closes_at[s] = first;
            slots.slot[b] = Some(s);
            if last == nodes {
                slots.from_start.push(b);
            } else {
                slots.opens[last].push(b);
            }
            slots.closes[first].push(b);
        }
        slots
    }

    /// Values per image of all slots together.
    pub fn image_len(&self) -> usize {
        self.slot_image_len.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::plan::PlanOptions;
    use crate::models;

    #[test]
    fn googlenet_d2l_shares_its_gradient_buffers() {
        let graph = models::build("googlenet-d2l", models::default_config("googlenet-d2l").unwrap()).unwrap();
        let plan = Plan::for_capacity(&graph, PlanOptions::default(), 1).unwrap();
        let (all, shared) = (
            GradientSlots::unshared(&graph, &plan).image_len(),
            GradientSlots::shared(&graph, &plan).image_len(),
        );
        println!("gradient values per image: {shared} shared, {all} unshared");
        assert!(shared * 2 < all, "{shared} of {all}");
    }
}
