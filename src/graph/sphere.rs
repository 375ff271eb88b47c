//! Geometry on the unit sphere shared by the mesh, the grid and the features.
//!
//! Everything spatial happens on 3-D unit vectors: a k-d tree over them has no
//! seam at the dateline and no singularity at the poles, and the Euclidean (chord)
//! distance between two unit vectors is a monotonic function of their great-circle
//! distance, so a chord radius query is an exact great-circle radius query.

/// A point on (or near) the unit sphere.
pub type Vec3 = [f64; 3];

/// Unit vector of a latitude/longitude in degrees.
pub fn unit_vector(lat_deg: f64, lon_deg: f64) -> Vec3 {
    let (slat, clat) = lat_deg.to_radians().sin_cos();
    let (slon, clon) = lon_deg.to_radians().sin_cos();
    [clat * clon, clat * slon, slat]
}

/// Latitude and longitude in degrees of a (not necessarily unit) vector;
/// longitude in `(-180, 180]`, 0 at the poles.
pub fn lat_lon(p: &Vec3) -> (f64, f64) {
    let lat = p[2].atan2((p[0] * p[0] + p[1] * p[1]).sqrt()).to_degrees();
    let lon = p[1].atan2(p[0]).to_degrees();
    (lat, lon)
}

pub fn dot(a: &Vec3, b: &Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub fn cross(a: &Vec3, b: &Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub fn sub(a: &Vec3, b: &Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub fn norm(a: &Vec3) -> f64 {
    dot(a, a).sqrt()
}

pub fn normalize(a: &Vec3) -> Vec3 {
    let n = norm(a);
    [a[0] / n, a[1] / n, a[2] / n]
}

/// Chord (straight-line) length between two unit vectors.
pub fn chord(a: &Vec3, b: &Vec3) -> f64 {
    norm(&sub(a, b))
}

/// Chord length that subtends a great-circle arc of `arc` radians.
pub fn arc_to_chord(arc: f64) -> f64 {
    2.0 * (arc.min(std::f64::consts::PI) / 2.0).sin()
}

/// Great-circle arc (radians) subtended by a chord of length `chord`.
pub fn chord_to_arc(chord: f64) -> f64 {
    2.0 * (chord / 2.0).clamp(-1.0, 1.0).asin()
}

/// How far `p` lies inside spherical triangle `(a, b, c)` (vertices counter-clockwise
/// seen from outside): the smallest of the sines of the angular distances from `p`
/// to the three edge great circles, positive inside, negative outside. Comparing
/// this across triangles picks the one that contains `p`, or failing that the one
/// it is least outside of.
pub fn inside_margin(p: &Vec3, a: &Vec3, b: &Vec3, c: &Vec3) -> f64 {
    let side = |u: &Vec3, v: &Vec3| {
        let n = cross(u, v);
        dot(&n, p) / norm(&n)
    };
    side(a, b).min(side(b, c)).min(side(c, a))
}

/// The receiver-local frame `[up, east, north]` at unit vector `r`. Expressing a
/// displacement in it is the rotation that brings `r` to latitude 0, longitude 0
/// (GraphCast's "receiver at a fixed reference point"), so an edge's features
/// depend only on its shape, not on where on the globe it lies.
pub fn local_frame(r: &Vec3) -> [Vec3; 3] {
    let (lat, lon) = lat_lon(r);
    let (slat, clat) = lat.to_radians().sin_cos();
    let (slon, clon) = lon.to_radians().sin_cos();
    [
        [clat * clon, clat * slon, slat],
        [-slon, clon, 0.0],
        [-slat * clon, -slat * slon, clat],
    ]
}

/// `d` in a frame from [`local_frame`].
pub fn in_frame(frame: &[Vec3; 3], d: &Vec3) -> Vec3 {
    [dot(d, &frame[0]), dot(d, &frame[1]), dot(d, &frame[2])]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_vector_round_trips() {
        for &(la, lo) in &[(0.0, 0.0), (45.0, -120.0), (-89.0, 179.0), (10.0, 90.0)] {
            let (la2, lo2) = lat_lon(&unit_vector(la, lo));
            assert!((la - la2).abs() < 1e-9 && (lo - lo2).abs() < 1e-9);
        }
    }

    #[test]
    fn chord_and_arc_are_inverse() {
        for arc in [0.0, 0.01, 1.0, 3.0] {
            assert!((chord_to_arc(arc_to_chord(arc)) - arc).abs() < 1e-12);
        }
        let a = unit_vector(0.0, 0.0);
        let b = unit_vector(0.0, 90.0);
        assert!((chord_to_arc(chord(&a, &b)) - std::f64::consts::FRAC_PI_2).abs() < 1e-12);
    }

    #[test]
    fn local_frame_puts_receiver_up_and_north_positive() {
        let r = unit_vector(30.0, 100.0);
        let f = local_frame(&r);
        let up = in_frame(&f, &r);
        assert!((up[0] - 1.0).abs() < 1e-12 && up[1].abs() < 1e-12 && up[2].abs() < 1e-12);
        let d = sub(&unit_vector(31.0, 100.0), &r);
        let l = in_frame(&f, &d);
        assert!(l[2] > 0.0 && l[1].abs() < 1e-12);
        let d = sub(&unit_vector(30.0, 101.0), &r);
        assert!(in_frame(&f, &d)[1] > 0.0);
    }

    #[test]
    fn inside_margin_sign() {
        let a = unit_vector(0.0, 0.0);
        let b = unit_vector(0.0, 10.0);
        let c = unit_vector(10.0, 5.0);
        assert!(inside_margin(&unit_vector(3.0, 5.0), &a, &b, &c) > 0.0);
        assert!(inside_margin(&unit_vector(-3.0, 5.0), &a, &b, &c) < 0.0);
    }
}
