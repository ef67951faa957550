//! Where every activation lives. Each node's output gets a [`Place`] in one of the planned buffers; the
//! gradient of that output lives at the same place in a parallel set of gradient buffers.
//!
//! Two placements avoid copies: a branch feeding a channel concat writes straight into its channel slice
//! of the concat's buffer (so concat costs nothing forward or backward), and a flatten shares its input's
//! memory. A part that cannot be placed (the graph input, a nested concat, a node that reads another part
//! of the same concat) is copied by the concat instead.

use super::builder::{Graph, Layer, NodeId};

/// Where a node's output lives: image `n` is `buffer[n * stride + offset..][..len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Which buffer.
    pub buffer: usize,
    /// Offset of this output within each image's stretch of the buffer.
    pub offset: usize,
    /// Values per image.
    pub len: usize,
    /// Values per image of the whole buffer.
    pub stride: usize,
}

/// The buffers and places of a graph.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Per node: where its output lives.
    pub places: Vec<Place>,
    /// Per buffer: values per image.
    pub buffer_image_len: Vec<usize>,
    /// Per concat node and input: true if the input already lives in its slice (no copy needed).
    pub in_place: Vec<Vec<bool>>,
}

impl Plan {
    /// Plans `graph`.
    pub fn new(graph: &Graph) -> Plan {
        let nodes = &graph.nodes;
        // Pass 1: which nodes write straight into a concat, at which offset.
        let mut host: Vec<Option<(NodeId, usize)>> = vec![None; nodes.len()];
        let mut in_place = vec![Vec::new(); nodes.len()];
        for (id, node) in nodes.iter().enumerate() {
            if !matches!(node.layer, Layer::Concat) {
                continue;
            }
            let mut offset = 0;
            for &part in &node.inputs {
                let p = &nodes[part];
                let computes = !matches!(p.layer, Layer::Input | Layer::Concat | Layer::Flatten);
                let reads_sibling = p.inputs.iter().any(|&i| host[i].map(|h| h.0) == Some(id));
                let placeable = computes && host[part].is_none() && !reads_sibling;
                if placeable {
                    host[part] = Some((id, offset));
                }
                in_place[id].push(placeable);
                offset += p.image_len();
            }
        }
        // Pass 2: a buffer for every node that owns its output.
        let mut places = vec![
            Place {
                buffer: 0,
                offset: 0,
                len: 0,
                stride: 0
            };
            nodes.len()
        ];
        let mut buffer_image_len = Vec::new();
        for (id, node) in nodes.iter().enumerate() {
            if host[id].is_none() && !matches!(node.layer, Layer::Flatten) {
                let len = node.image_len();
                places[id] = Place {
                    buffer: buffer_image_len.len(),
                    offset: 0,
                    len,
                    stride: len,
                };
                buffer_image_len.push(len);
            }
        }
        // Pass 3: hosted nodes and flattens, in order, so a concat's own place is known before its parts
        // are resolved (parts come earlier, so resolve them after all owners).
        for id in 0..nodes.len() {
            if let Some((concat, offset)) = host[id] {
                let c = places[concat];
                places[id] = Place {
                    buffer: c.buffer,
                    offset: c.offset + offset,
                    len: nodes[id].image_len(),
                    stride: c.stride,
                };
            }
        }
        for (id, node) in nodes.iter().enumerate() {
            if matches!(node.layer, Layer::Flatten) {
                places[id] = places[node.inputs[0]];
            }
        }
        Plan {
            places,
            buffer_image_len,
            in_place,
        }
    }

    /// Total f32 values of activations (or of gradients) per image.
    pub fn values_per_image(&self) -> usize {
        self.buffer_image_len.iter().sum()
    }
}
