//! Cropping the global mesh to a regional grid.
//!
//! A regional model only needs mesh nodes over its region, plus a margin so that
//! mesh triangles cover every grid node and boundary grid nodes have mesh
//! neighbours on all sides. Distances are great-circle distances to the grid's
//! latitude/longitude box, so the margin means the same thing at every latitude.

use crate::data::grid::Grid;

use super::sphere::{lat_lon, Vec3};

/// The latitude/longitude box spanned by a grid's node coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatLonBox {
    pub lat_min: f64,
    pub lat_max: f64,
    /// Western edge, degrees east.
    pub lon_min: f64,
    /// Eastward width, degrees (`0..=360`).
    pub lon_width: f64,
}

impl LatLonBox {
    pub fn of_grid(grid: &Grid) -> LatLonBox {
        let (lat_min, lat_max) = (grid.lat[0], grid.lat[grid.nlat() - 1]);
        let lon_min = grid.lon[0];
        let lon_width = (grid.lon[grid.nlon() - 1] - lon_min).clamp(0.0, 360.0);
        LatLonBox {
            lat_min,
            lat_max,
            lon_min,
            lon_width,
        }
    }

    /// Great-circle distance (radians) from `p` to the nearest point of the box; 0 inside.
    ///
    /// Inside the longitude range the nearest point is on the same meridian. Outside
    /// it, distance grows with longitude difference at any fixed latitude, so the
    /// nearest point is on the nearer meridian edge; along that edge the cosine of the
    /// distance is `R cos(lat' - theta)`, maximal at `theta` clamped to the edge or at
    /// an end of the edge.
    pub fn distance(&self, p: &Vec3) -> f64 {
        let (lat, lon) = lat_lon(p);
        let offset = (lon - self.lon_min).rem_euclid(360.0);
        if offset <= self.lon_width {
            return (self.lat_min - lat)
                .max(lat - self.lat_max)
                .max(0.0)
                .to_radians();
        }
        let dlon = (offset - self.lon_width).min(360.0 - offset).to_radians();
        let (slat, clat) = lat.to_radians().sin_cos();
        let (lo, hi) = (self.lat_min.to_radians(), self.lat_max.to_radians());
        let theta = slat.atan2(clat * dlon.cos());
        let cos_dist = |la: f64| slat * la.sin() + clat * la.cos() * dlon.cos();
        let best = [theta.clamp(lo, hi), lo, hi]
            .into_iter()
            .map(cos_dist)
            .fold(-1.0, f64::max);
        best.clamp(-1.0, 1.0).acos()
    }
}

/// Old-to-new index map of a subset of nodes.
#[derive(Debug, Clone)]
pub struct Reindex {
    /// Kept old ids, ascending; the new id of `kept[k]` is `k`.
    pub kept: Vec<u32>,
    new_id: Vec<u32>,
}

impl Reindex {
    pub fn new(keep: &[bool]) -> Reindex {
        let mut kept = Vec::new();
        let new_id = keep
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                if k {
                    kept.push(i as u32);
                    (kept.len() - 1) as u32
                } else {
                    u32::MAX
                }
            })
            .collect();
        Reindex { kept, new_id }
    }

    /// The new id of old node `i`, if kept.
    pub fn get(&self, i: u32) -> Option<u32> {
        Some(self.new_id[i as usize]).filter(|&n| n != u32::MAX)
    }

    /// Edges among kept nodes, renumbered, in their original order.
    pub fn edges(&self, edges: &[(u32, u32)]) -> Vec<(u32, u32)> {
        edges
            .iter()
            .filter_map(|&(s, r)| Some((self.get(s)?, self.get(r)?)))
            .collect()
    }

    /// Triangles whose three vertices are kept, renumbered.
    pub fn faces(&self, faces: &[[u32; 3]]) -> Vec<[u32; 3]> {
        faces
            .iter()
            .filter_map(|&[a, b, c]| Some([self.get(a)?, self.get(b)?, self.get(c)?]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::sphere::unit_vector;
    use super::*;

    fn storm_box() -> LatLonBox {
        LatLonBox {
            lat_min: 20.0,
            lat_max: 60.0,
            lon_min: -140.0,
            lon_width: 87.5,
        }
    }

    #[test]
    fn distance_inside_and_along_meridians() {
        let b = storm_box();
        assert_eq!(b.distance(&unit_vector(40.0, -100.0)), 0.0);
        assert!((b.distance(&unit_vector(65.0, -100.0)) - 5f64.to_radians()).abs() < 1e-12);
        assert!((b.distance(&unit_vector(10.0, -60.0)) - 10f64.to_radians()).abs() < 1e-12);
        // West of the box at its latitudes: at most the along-parallel angle, 5 deg x cos(lat).
        let d = b.distance(&unit_vector(40.0, -145.0));
        assert!(d > 0.0 && d <= (5.0 * 40f64.to_radians().cos()).to_radians() + 1e-9);
    }

    #[test]
    fn distance_matches_brute_force() {
        let b = storm_box();
        for &(la, lo) in &[
            (70.0, -160.0),
            (0.0, -30.0),
            (-50.0, 40.0),
            (85.0, 100.0),
            (30.0, -150.0),
        ] {
            let p = unit_vector(la, lo);
            let mut best = f64::INFINITY;
            for i in 0..=400 {
                for j in 0..=350 {
                    let q = unit_vector(20.0 + 0.1 * i as f64, -140.0 + 0.25 * j as f64);
                    let c = super::super::sphere::chord(&p, &q);
                    best = best.min(super::super::sphere::chord_to_arc(c));
                }
            }
            let d = b.distance(&p);
            assert!(
                d <= best + 1e-9 && best - d < 3e-3,
                "({la},{lo}): {d} vs {best}"
            );
        }
    }

    #[test]
    fn reindex_drops_edges_and_faces_touching_dropped_nodes() {
        let r = Reindex::new(&[true, false, true, true]);
        assert_eq!(r.kept, vec![0, 2, 3]);
        assert_eq!(r.edges(&[(0, 1), (2, 3), (3, 0)]), vec![(1, 2), (2, 0)]);
        assert_eq!(r.faces(&[[0, 2, 3], [0, 1, 2]]), vec![[0, 1, 2]]);
    }
}
