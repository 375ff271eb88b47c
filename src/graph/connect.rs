//! The encoder (grid2mesh) and decoder (mesh2grid) edges, as GraphCast builds them.
//!
//! All spatial search runs on k-d trees over 3-D unit vectors (no all-pairs loops),
//! so building the 1-degree graph is `O(N log N)`.

use std::num::NonZero;

use kiddo::{ImmutableKdTree, SquaredEuclidean};

use super::formats::Coo;
use super::sphere::{inside_margin, normalize, Vec3};

/// Candidate triangles examined per grid node: the containing triangle's centroid
/// is nearly always among the nearest few, since icosahedral triangles at one level
/// differ little in size.
const NEAR_FACES: usize = 8;
/// Candidates examined when none of the nearest few contains the point (a regional
/// grid node outside every kept triangle).
const FAR_FACES: usize = 64;

/// Encoder edges: each mesh node receives from every grid node within
/// `radius_chord` (a chord of the unit sphere, i.e. straight-line distance between
/// unit vectors, as in GraphCast), or from its nearest grid node when none is that
/// close, so that no mesh node is left without input. Sorted by receiver, then sender.
pub fn grid2mesh(grid: &[Vec3], mesh: &[Vec3], radius_chord: f64) -> Coo {
    let tree: ImmutableKdTree<f64, 3> = ImmutableKdTree::new_from_slice(grid);
    let r2 = radius_chord * radius_chord;
    let (mut senders, mut receivers) = (Vec::new(), Vec::new());
    let mut near: Vec<u32> = Vec::new();
    for (m, p) in mesh.iter().enumerate() {
        near.clear();
        near.extend(
            tree.within_unsorted::<SquaredEuclidean>(p, r2)
                .iter()
                .map(|n| n.item as u32),
        );
        if near.is_empty() {
            near.push(tree.nearest_one::<SquaredEuclidean>(p).item as u32);
        }
        near.sort_unstable();
        senders.extend_from_slice(&near);
        receivers.extend(std::iter::repeat_n(m as u32, near.len()));
    }
    Coo {
        n_senders: grid.len(),
        n_receivers: mesh.len(),
        senders,
        receivers,
    }
}

/// Decoder edges: each grid node receives from the three vertices of the mesh
/// triangle that contains it, or, where no triangle does (a regional grid's edge
/// beyond the kept mesh), of the triangle it lies least far outside of.
pub fn mesh2grid(grid: &[Vec3], mesh: &[Vec3], faces: &[[u32; 3]]) -> Coo {
    let centroids: Vec<Vec3> = faces
        .iter()
        .map(|f| {
            let [a, b, c] = f.map(|i| mesh[i as usize]);
            normalize(&[a[0] + b[0] + c[0], a[1] + b[1] + c[1], a[2] + b[2] + c[2]])
        })
        .collect();
    let tree: ImmutableKdTree<f64, 3> = ImmutableKdTree::new_from_slice(&centroids);
    let best_of = |p: &Vec3, n: usize| -> (f64, usize) {
        let n = NonZero::new(n.min(faces.len())).expect("at least one face");
        tree.nearest_n::<SquaredEuclidean>(p, n)
            .iter()
            .map(|c| {
                let [a, b, cc] = faces[c.item as usize].map(|i| mesh[i as usize]);
                (inside_margin(p, &a, &b, &cc), c.item as usize)
            })
            .fold((f64::NEG_INFINITY, usize::MAX), |best, x| {
                if x.0 > best.0 {
                    x
                } else {
                    best
                }
            })
    };
    let mut senders = Vec::with_capacity(grid.len() * 3);
    let mut receivers = Vec::with_capacity(grid.len() * 3);
    for (g, p) in grid.iter().enumerate() {
        let (margin, near_face) = best_of(p, NEAR_FACES);
        let face = if margin >= 0.0 {
            near_face
        } else {
            best_of(p, FAR_FACES).1
        };
        senders.extend_from_slice(&faces[face]);
        receivers.extend_from_slice(&[g as u32; 3]);
    }
    Coo {
        n_senders: mesh.len(),
        n_receivers: grid.len(),
        senders,
        receivers,
    }
}
