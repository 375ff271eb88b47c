//! Typed node sets and edge sets, as in DeepMind graphcast's `TypedGraph`: the
//! graph is a few named sets of nodes (grid, mesh) and directed edges between
//! them (grid2mesh, mesh, mesh2grid), each with its own feature table.

use super::formats::{Coo, Csr, FormatBytes};
use super::sphere::{in_frame, local_frame, sub, unit_vector, Vec3};

/// Features per node: `[sin lat, cos lat, sin lon, cos lon]`, the same layout as
/// [`crate::data::grid::Grid::static_features`].
pub const NODE_FEATURES: usize = 4;

/// Features per edge: `[length, dx, dy, dz]`, where `(dx, dy, dz)` is the
/// sender-minus-receiver displacement in the receiver's local `[up, east, north]`
/// frame, all divided by the longest edge of the edge set, so every edge set's
/// features lie in `[-1, 1]` whatever the resolution.
pub const EDGE_FEATURES: usize = 4;

/// A set of nodes on the sphere.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSet {
    /// Degrees north.
    pub lat: Vec<f64>,
    /// Degrees east.
    pub lon: Vec<f64>,
    /// Node-major, [`NODE_FEATURES`] per node.
    pub features: Vec<f32>,
}

impl NodeSet {
    pub fn new(lat: Vec<f64>, lon: Vec<f64>) -> NodeSet {
        let features = lat
            .iter()
            .zip(&lon)
            .flat_map(|(la, lo)| {
                let (sla, cla) = la.to_radians().sin_cos();
                let (slo, clo) = lo.to_radians().sin_cos();
                [sla as f32, cla as f32, slo as f32, clo as f32]
            })
            .collect();
        NodeSet { lat, lon, features }
    }

    pub fn len(&self) -> usize {
        self.lat.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lat.is_empty()
    }

    /// Unit vectors of the nodes.
    pub fn positions(&self) -> Vec<Vec3> {
        self.lat
            .iter()
            .zip(&self.lon)
            .map(|(&la, &lo)| unit_vector(la, lo))
            .collect()
    }
}

/// A set of directed edges between two node sets.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeSet {
    /// Senders and receivers; the canonical edge order.
    pub coo: Coo,
    /// Edge-major in COO order, [`EDGE_FEATURES`] per edge.
    pub features: Vec<f32>,
    /// The same edges grouped by receiver, for aggregation.
    pub by_receiver: Csr,
}

impl EdgeSet {
    /// An edge set with its GraphCast features computed from node positions.
    pub fn with_geometry(coo: Coo, senders: &[Vec3], receivers: &[Vec3]) -> EdgeSet {
        let features = edge_features(&coo, senders, receivers);
        EdgeSet::new(coo, features)
    }

    /// An edge set from edges and already computed features (the CSR is derived).
    pub fn new(coo: Coo, features: Vec<f32>) -> EdgeSet {
        debug_assert_eq!(features.len(), coo.len() * EDGE_FEATURES);
        let by_receiver = coo.to_csr();
        EdgeSet {
            coo,
            features,
            by_receiver,
        }
    }

    pub fn len(&self) -> usize {
        self.coo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.coo.is_empty()
    }

    pub fn senders(&self) -> &[u32] {
        &self.coo.senders
    }

    pub fn receivers(&self) -> &[u32] {
        &self.coo.receivers
    }

    /// Bytes of the index arrays in each storage format.
    pub fn format_bytes(&self) -> FormatBytes {
        FormatBytes {
            coo: self.coo.bytes(),
            csr: self.by_receiver.bytes(),
            csc: self.coo.to_csc().bytes(),
        }
    }
}

fn edge_features(coo: &Coo, senders: &[Vec3], receivers: &[Vec3]) -> Vec<f32> {
    let frames: Vec<[Vec3; 3]> = receivers.iter().map(local_frame).collect();
    let local: Vec<Vec3> = coo
        .senders
        .iter()
        .zip(&coo.receivers)
        .map(|(&s, &r)| {
            in_frame(
                &frames[r as usize],
                &sub(&senders[s as usize], &receivers[r as usize]),
            )
        })
        .collect();
    let length = |d: &Vec3| (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
    let longest = local.iter().map(length).fold(0.0, f64::max);
    let scale = if longest > 0.0 { 1.0 / longest } else { 1.0 };
    local
        .iter()
        .flat_map(|d| [length(d), d[0], d[1], d[2]].map(|x| (x * scale) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_features_are_normalised_and_rotation_invariant() {
        // Two edges of the same shape at different places get the same features.
        let pos = vec![
            unit_vector(0.0, 0.0),
            unit_vector(0.0, 1.0),
            unit_vector(40.0, 100.0),
            unit_vector(40.0, 101.0),
        ];
        let coo = Coo {
            n_senders: 4,
            n_receivers: 4,
            senders: vec![1, 3, 0],
            receivers: vec![0, 2, 1],
        };
        let e = EdgeSet::with_geometry(coo, &pos, &pos);
        let f = |k: usize| &e.features[k * EDGE_FEATURES..(k + 1) * EDGE_FEATURES];
        assert!(e.features.iter().all(|x| x.abs() <= 1.0 + 1e-6));
        assert!(
            f(0).iter().any(|&x| (x - 1.0).abs() < 1e-6),
            "longest edge has length 1"
        );
        assert!(f(0)[2] > 0.0, "sender is east of receiver");
        assert!(f(2)[2] < 0.0, "sender is west of receiver");
        // Same displacement in longitude at 40N is shorter, but still pure east.
        assert!(f(1)[0] < f(0)[0] && f(1)[2] > 0.0);
        let n = NodeSet::new(vec![30.0], vec![-90.0]);
        assert_eq!(
            n.features,
            vec![
                0.5f32,
                (30f64.to_radians().cos()) as f32,
                -1.0,
                (-90f64).to_radians().cos() as f32
            ]
        );
    }
}
