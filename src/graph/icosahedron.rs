//! The icosahedral mesh and GraphCast's multi-mesh.
//!
//! A regular icosahedron is refined `r` times: each triangle is split into four,
//! and the new edge midpoints are pushed out onto the unit sphere. Midpoints are
//! shared between the two triangles of an edge, so every level is a closed
//! triangulation (V - E + F = 2). New vertices are appended, so a vertex of level
//! `l` keeps its index at every finer level: the edges of all levels can then be
//! laid on the finest level's nodes, which is the multi-mesh. Its long coarse edges
//! carry information across the globe in few message-passing steps.

use std::collections::HashMap;

use super::sphere::{chord, normalize, Vec3};

/// Every refinement level `0..=r` of the icosahedral mesh over one shared vertex list.
#[derive(Debug, Clone)]
pub struct MeshHierarchy {
    /// Unit vectors; level `l` uses the first `10 * 4^l + 2` of them.
    pub vertices: Vec<Vec3>,
    /// `faces[l]`: the triangles of level `l`, counter-clockwise seen from outside.
    pub faces: Vec<Vec<[u32; 3]>>,
}

impl MeshHierarchy {
    /// The icosahedron refined `level` times, keeping every intermediate level.
    pub fn new(level: u32) -> MeshHierarchy {
        let (mut vertices, base) = icosahedron();
        let mut faces = vec![base];
        for _ in 0..level {
            let next = refine(&mut vertices, faces.last().expect("level 0 exists"));
            faces.push(next);
        }
        MeshHierarchy { vertices, faces }
    }

    /// The finest refinement level.
    pub fn level(&self) -> u32 {
        (self.faces.len() - 1) as u32
    }

    /// The triangles of the finest level.
    pub fn finest_faces(&self) -> &[[u32; 3]] {
        self.faces.last().expect("level 0 exists")
    }

    /// The longest edge of the finest level, as a chord of the unit sphere.
    pub fn finest_max_edge_chord(&self) -> f64 {
        unique_edges(self.finest_faces())
            .iter()
            .map(|&(a, b)| chord(&self.vertices[a as usize], &self.vertices[b as usize]))
            .fold(0.0, f64::max)
    }

    /// Multi-mesh edges `(sender, receiver)`: the union of the edges of every level,
    /// in both directions, without duplicates, sorted by receiver then sender.
    pub fn multi_mesh_edges(&self) -> Vec<(u32, u32)> {
        let mut undirected: Vec<(u32, u32)> =
            self.faces.iter().flat_map(|f| unique_edges(f)).collect();
        undirected.sort_unstable();
        undirected.dedup();
        let mut directed: Vec<(u32, u32)> = undirected
            .iter()
            .flat_map(|&(a, b)| [(a, b), (b, a)])
            .collect();
        directed.sort_unstable_by_key(|&(s, r)| (r, s));
        directed
    }
}

/// The undirected edges `(a, b)`, `a < b`, of a triangulation, sorted and unique.
pub fn unique_edges(faces: &[[u32; 3]]) -> Vec<(u32, u32)> {
    let mut edges: Vec<(u32, u32)> = faces
        .iter()
        .flat_map(|&[a, b, c]| [(a, b), (b, c), (c, a)])
        .map(|(a, b)| (a.min(b), a.max(b)))
        .collect();
    edges.sort_unstable();
    edges.dedup();
    edges
}

/// The regular icosahedron on the unit sphere: 12 vertices, 20 counter-clockwise faces.
fn icosahedron() -> (Vec<Vec3>, Vec<[u32; 3]>) {
    let t = (1.0 + 5f64.sqrt()) / 2.0;
    let raw: [Vec3; 12] = [
        [-1.0, t, 0.0],
        [1.0, t, 0.0],
        [-1.0, -t, 0.0],
        [1.0, -t, 0.0],
        [0.0, -1.0, t],
        [0.0, 1.0, t],
        [0.0, -1.0, -t],
        [0.0, 1.0, -t],
        [t, 0.0, -1.0],
        [t, 0.0, 1.0],
        [-t, 0.0, -1.0],
        [-t, 0.0, 1.0],
    ];
    let faces = vec![
        [0, 11, 5],
        [0, 5, 1],
        [0, 1, 7],
        [0, 7, 10],
        [0, 10, 11],
        [1, 5, 9],
        [5, 11, 4],
        [11, 10, 2],
        [10, 7, 6],
        [7, 1, 8],
        [3, 9, 4],
        [3, 4, 2],
        [3, 2, 6],
        [3, 6, 8],
        [3, 8, 9],
        [4, 9, 5],
        [2, 4, 11],
        [6, 2, 10],
        [8, 6, 7],
        [9, 8, 1],
    ];
    (raw.iter().map(normalize).collect(), faces)
}

/// Splits every face into four, appending the (deduplicated) edge midpoints,
/// projected onto the sphere, to `vertices`. Orientation is preserved.
fn refine(vertices: &mut Vec<Vec3>, faces: &[[u32; 3]]) -> Vec<[u32; 3]> {
    let mut midpoints: HashMap<(u32, u32), u32> = HashMap::with_capacity(faces.len() * 3 / 2);
    let mut midpoint = |a: u32, b: u32, vertices: &mut Vec<Vec3>| -> u32 {
        *midpoints.entry((a.min(b), a.max(b))).or_insert_with(|| {
            let (pa, pb) = (vertices[a as usize], vertices[b as usize]);
            vertices.push(normalize(&[pa[0] + pb[0], pa[1] + pb[1], pa[2] + pb[2]]));
            (vertices.len() - 1) as u32
        })
    };
    let mut out = Vec::with_capacity(faces.len() * 4);
    for &[a, b, c] in faces {
        let ab = midpoint(a, b, vertices);
        let bc = midpoint(b, c, vertices);
        let ca = midpoint(c, a, vertices);
        out.extend_from_slice(&[[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::sphere::{cross, dot, sub};
    use super::*;

    #[test]
    fn counts_and_euler_at_every_level() {
        let mesh = MeshHierarchy::new(6);
        assert_eq!(mesh.level(), 6);
        for (l, faces) in mesh.faces.iter().enumerate() {
            let v = 10 * 4usize.pow(l as u32) + 2;
            let e = unique_edges(faces).len();
            let f = faces.len();
            assert_eq!(f, 20 * 4usize.pow(l as u32), "faces at level {l}");
            assert_eq!(e, 30 * 4usize.pow(l as u32), "edges at level {l}");
            let used = faces.iter().flatten().map(|&i| i as usize).max().unwrap() + 1;
            assert_eq!(used, v, "vertices at level {l}");
            assert_eq!(v as i64 - e as i64 + f as i64, 2, "Euler at level {l}");
        }
        assert_eq!(mesh.vertices.len(), 40_962);
        assert!(mesh
            .vertices
            .iter()
            .all(|p| (dot(p, p) - 1.0).abs() < 1e-12));
    }

    #[test]
    fn faces_are_counter_clockwise_from_outside() {
        let mesh = MeshHierarchy::new(3);
        for faces in &mesh.faces {
            for &[a, b, c] in faces {
                let [pa, pb, pc] = [a, b, c].map(|i| mesh.vertices[i as usize]);
                let n = cross(&sub(&pb, &pa), &sub(&pc, &pa));
                assert!(dot(&n, &pa) > 0.0);
            }
        }
    }

    #[test]
    fn multi_mesh_is_union_of_levels_in_both_directions() {
        let mesh = MeshHierarchy::new(4);
        let edges = mesh.multi_mesh_edges();
        let per_level: usize = (0..=4).map(|l| 30 * 4usize.pow(l)).sum();
        assert_eq!(edges.len(), 2 * per_level);
        let set: std::collections::HashSet<(u32, u32)> = edges.iter().copied().collect();
        assert_eq!(set.len(), edges.len(), "no duplicate edges");
        assert!(edges.iter().all(|&(s, r)| s != r && set.contains(&(r, s))));
        for faces in &mesh.faces {
            assert!(unique_edges(faces).iter().all(|e| set.contains(e)));
        }
    }

    #[test]
    fn coarse_vertices_keep_their_index() {
        let coarse = MeshHierarchy::new(2);
        let fine = MeshHierarchy::new(4);
        assert_eq!(
            &fine.vertices[..coarse.vertices.len()],
            &coarse.vertices[..]
        );
    }
}
