//! The regular latitude/longitude grid every dataset is put on.
//!
//! Files come with descending latitudes, 0..360 or -180..180 longitudes and any
//! dimension order; the loader maps them all onto one canonical grid: latitudes
//! ascending, longitudes ascending and contiguous, node index `i_lat * nlon + i_lon`.

use serde::{Deserialize, Serialize};

/// Canonical grid: latitudes ascending (degrees north), longitudes ascending and
/// contiguous (degrees east, in `[-180, 180)` for global grids, or starting at the
/// region's western edge for regional ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub lat: Vec<f64>,
    pub lon: Vec<f64>,
    /// Longitudes wrap all the way around the sphere.
    pub global: bool,
}

/// A region `lat_min,lat_max,lon_min,lon_max` in degrees; `lon_min > lon_max` crosses the dateline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub lat_min: f64,
    pub lat_max: f64,
    pub lon_min: f64,
    pub lon_max: f64,
}

impl std::str::FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                format!("region '{s}' must be four numbers: lat_min,lat_max,lon_min,lon_max")
            })?;
        let [lat_min, lat_max, lon_min, lon_max] = parts[..] else {
            return Err(format!(
                "region '{s}' must be four numbers: lat_min,lat_max,lon_min,lon_max"
            ));
        };
        if !(-90.0..=90.0).contains(&lat_min)
            || !(-90.0..=90.0).contains(&lat_max)
            || lat_min >= lat_max
        {
            return Err(format!("region '{s}': need -90 <= lat_min < lat_max <= 90"));
        }
        Ok(Region {
            lat_min,
            lat_max,
            lon_min,
            lon_max,
        })
    }
}

impl Region {
    pub fn contains_lat(&self, lat: f64) -> bool {
        lat >= self.lat_min - 1e-9 && lat <= self.lat_max + 1e-9
    }

    /// Longitude membership on the circle, so `170,-170` selects the 20 degrees across the dateline.
    pub fn contains_lon(&self, lon: f64) -> bool {
        let width = (self.lon_max - self.lon_min).rem_euclid(360.0);
        let width = if width == 0.0 && self.lon_max != self.lon_min {
            360.0
        } else {
            width
        };
        (lon - self.lon_min).rem_euclid(360.0) <= width + 1e-9
    }
}

/// The most cells a grid may have (67 M: a 0.05-degree global grid has 26 M). Beyond
/// it one field alone outgrows any machine; refusing early beats an allocation abort.
pub const MAX_GRID_CELLS: usize = 1 << 26;

/// Refuses a grid of `nlat` x `nlon` cells above [`MAX_GRID_CELLS`].
pub fn check_grid_size(nlat: usize, nlon: usize) -> Result<(), crate::error::InputError> {
    match nlat.checked_mul(nlon) {
        Some(cells) if cells <= MAX_GRID_CELLS => Ok(()),
        _ => Err(crate::error::InputError(format!(
            "a grid of {nlat} x {nlon} cells is more than meshcast handles ({MAX_GRID_CELLS} cells)"
        ))),
    }
}

impl Grid {
    /// A regular global grid of `deg` spacing, cell centres from -90 to 90 inclusive
    /// (ERA5/WeatherBench style: 1 deg gives 181 x 360; the 64,800-node "1 degree"
    /// grid of the benchmarks is [`Grid::global_cell_centred`]).
    pub fn global_with_poles(deg: f64) -> Grid {
        let nlat = (180.0 / deg).round() as usize + 1;
        let nlon = (360.0 / deg).round() as usize;
        Grid {
            lat: (0..nlat).map(|i| -90.0 + i as f64 * deg).collect(),
            lon: (0..nlon).map(|j| -180.0 + j as f64 * deg).collect(),
            global: true,
        }
    }

    /// A regular global grid of `deg` spacing with cell centres off the poles:
    /// 1 deg gives 180 x 360 = 64,800 nodes, 5 deg 36 x 72.
    pub fn global_cell_centred(deg: f64) -> Grid {
        let nlat = (180.0 / deg).round() as usize;
        let nlon = (360.0 / deg).round() as usize;
        Grid {
            lat: (0..nlat).map(|i| -90.0 + (i as f64 + 0.5) * deg).collect(),
            lon: (0..nlon).map(|j| -180.0 + (j as f64 + 0.5) * deg).collect(),
            global: true,
        }
    }

    pub fn nlat(&self) -> usize {
        self.lat.len()
    }

    pub fn nlon(&self) -> usize {
        self.lon.len()
    }

    /// Number of grid cells (`nlat * nlon`).
    pub fn len(&self) -> usize {
        self.lat.len() * self.lon.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Latitude and longitude (degrees) of node `i` (`i_lat * nlon + i_lon`).
    pub fn node_lat_lon(&self, i: usize) -> (f64, f64) {
        (self.lat[i / self.nlon()], self.lon[i % self.nlon()])
    }

    /// Median spacing between neighbouring latitudes, degrees.
    pub fn lat_spacing(&self) -> f64 {
        median_step(&self.lat)
    }

    /// Median spacing between neighbouring longitudes, degrees.
    pub fn lon_spacing(&self) -> f64 {
        median_step(&self.lon)
    }

    /// Static per-node features that tell the model where a node is:
    /// `[sin lat, cos lat, sin lon, cos lon]`, node-major.
    pub fn static_features(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len() * STATIC_FEATURES);
        for &la in &self.lat {
            let (sla, cla) = la.to_radians().sin_cos();
            for &lo in &self.lon {
                let (slo, clo) = lo.to_radians().sin_cos();
                out.extend_from_slice(&[sla as f32, cla as f32, slo as f32, clo as f32]);
            }
        }
        out
    }

    /// Per-node latitude weights `cos(lat)` normalised to mean 1 over the given nodes.
    pub fn latitude_weights(&self, valid: &[bool]) -> Vec<f32> {
        let raw: Vec<f64> = (0..self.len())
            .map(|i| self.node_lat_lon(i).0.to_radians().cos().max(0.0))
            .collect();
        let (sum, n) = raw
            .iter()
            .zip(valid)
            .filter(|(_, &v)| v)
            .fold((0.0, 0usize), |(s, n), (w, _)| (s + w, n + 1));
        let mean = if n > 0 && sum > 0.0 {
            sum / n as f64
        } else {
            1.0
        };
        raw.iter().map(|w| (w / mean) as f32).collect()
    }
}

/// Number of static features per node produced by [`Grid::static_features`].
pub const STATIC_FEATURES: usize = 4;

fn median_step(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return f64::NAN;
    }
    let mut d: Vec<f64> = v.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    d.sort_by(f64::total_cmp);
    d[d.len() / 2]
}

/// How one canonical axis reads from a file's axis: position `k` of the canonical
/// axis holds the file's index `file_index[k]` and the coordinate `values[k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisMap {
    pub values: Vec<f64>,
    pub file_index: Vec<usize>,
}

/// Orders a latitude axis ascending; `None` names the problem.
pub fn normalize_latitudes(raw: &[f64], region: Option<&Region>) -> Result<AxisMap, String> {
    if raw.iter().any(|x| !x.is_finite() || x.abs() > 90.0 + 1e-6) {
        return Err("latitudes outside -90..90 or not finite".into());
    }
    check_strictly_monotonic(raw, "latitude")?;
    let mut idx: Vec<usize> = (0..raw.len()).collect();
    idx.sort_by(|&a, &b| raw[a].total_cmp(&raw[b]));
    if let Some(r) = region {
        idx.retain(|&i| r.contains_lat(raw[i]));
    }
    Ok(AxisMap {
        values: idx.iter().map(|&i| raw[i]).collect(),
        file_index: idx,
    })
}

/// Orders a longitude axis ascending and contiguous and decides whether it is global.
pub fn normalize_longitudes(
    raw: &[f64],
    region: Option<&Region>,
) -> Result<(AxisMap, bool), String> {
    if raw.iter().any(|x| !x.is_finite()) {
        return Err("longitudes are not finite".into());
    }
    check_strictly_monotonic(raw, "longitude")?;
    let n = raw.len();
    let wrapped: Vec<f64> = raw.iter().map(|x| wrap_lon(*x, -180.0)).collect();
    let mut sorted = wrapped.clone();
    sorted.sort_by(f64::total_cmp);
    if sorted.windows(2).any(|w| (w[1] - w[0]).abs() < 1e-9) {
        return Err("longitudes repeat after wrapping to -180..180 (overlapping columns)".into());
    }
    let step = median_step(&sorted);
    let global = n >= 3 && ((n as f64) * step - 360.0).abs() < 0.5 * step;
    // Where the region starts decides the origin; otherwise start after the largest gap
    // so that a regional grid crossing the dateline stays contiguous.
    let origin = match region {
        Some(r) if !(global && region_covers_all_lons(r)) => r.lon_min,
        _ if global => -180.0,
        _ => {
            let (gap_at, _) = sorted
                .windows(2)
                .enumerate()
                .map(|(i, w)| (i, w[1] - w[0]))
                .chain(std::iter::once((n - 1, sorted[0] + 360.0 - sorted[n - 1])))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("non-empty axis");
            let start = sorted[(gap_at + 1) % n];
            start - 1e-9
        }
    };
    let mut idx: Vec<usize> = (0..n).collect();
    if let Some(r) = region {
        idx.retain(|&i| r.contains_lon(raw[i]));
    }
    let key = |i: usize| wrap_lon(raw[i], origin);
    idx.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
    let values: Vec<f64> = idx.iter().map(|&i| key(i)).collect();
    let still_global = global && idx.len() == n;
    Ok((
        AxisMap {
            values,
            file_index: idx,
        },
        still_global,
    ))
}

fn region_covers_all_lons(r: &Region) -> bool {
    (r.lon_max - r.lon_min).abs() >= 360.0 - 1e-9
}

/// Wraps a longitude into `[origin, origin + 360)`.
pub fn wrap_lon(lon: f64, origin: f64) -> f64 {
    origin + (lon - origin).rem_euclid(360.0)
}

fn check_strictly_monotonic(raw: &[f64], what: &str) -> Result<(), String> {
    if raw.len() < 2 {
        return Ok(());
    }
    let up = raw.windows(2).all(|w| w[1] > w[0]);
    let down = raw.windows(2).all(|w| w[1] < w[0]);
    if up || down {
        Ok(())
    } else {
        Err(format!("{what} axis is not strictly monotonic"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descending_latitudes_are_flipped() {
        let m = normalize_latitudes(&[60.0, 40.0, 20.0], None).unwrap();
        assert_eq!(m.values, vec![20.0, 40.0, 60.0]);
        assert_eq!(m.file_index, vec![2, 1, 0]);
    }

    #[test]
    fn zero_to_360_global_becomes_minus_180() {
        let raw: Vec<f64> = (0..72).map(|j| j as f64 * 5.0).collect();
        let (m, global) = normalize_longitudes(&raw, None).unwrap();
        assert!(global);
        assert_eq!(m.values[0], -180.0);
        assert_eq!(m.file_index[0], 36);
        assert!(m
            .values
            .windows(2)
            .all(|w| (w[1] - w[0] - 5.0).abs() < 1e-9));
    }

    #[test]
    fn regional_grid_across_dateline_stays_contiguous() {
        let raw = vec![170.0, 175.0, 180.0, 185.0, 190.0];
        let (m, global) = normalize_longitudes(&raw, None).unwrap();
        assert!(!global);
        assert!(
            m.values
                .windows(2)
                .all(|w| (w[1] - w[0] - 5.0).abs() < 1e-9),
            "{:?}",
            m.values
        );
    }

    #[test]
    fn region_subset_crossing_dateline() {
        let raw: Vec<f64> = (0..72).map(|j| -180.0 + j as f64 * 5.0).collect();
        let r: Region = "-10,10,170,-170".parse().unwrap();
        let (m, global) = normalize_longitudes(&raw, Some(&r)).unwrap();
        assert!(!global);
        assert_eq!(m.values, vec![170.0, 175.0, 180.0, 185.0, 190.0]);
    }

    #[test]
    fn rejects_non_monotonic_axes() {
        assert!(normalize_latitudes(&[0.0, 10.0, 5.0], None).is_err());
        assert!(normalize_longitudes(&[0.0, 10.0, 5.0], None).is_err());
        assert!(normalize_latitudes(&[0.0, 95.0], None).is_err());
    }

    #[test]
    fn latitude_weights_have_mean_one() {
        let g = Grid::global_cell_centred(5.0);
        let valid = vec![true; g.len()];
        let w = g.latitude_weights(&valid);
        let mean: f64 = w.iter().map(|&x| x as f64).sum::<f64>() / w.len() as f64;
        assert!((mean - 1.0).abs() < 1e-5);
        assert_eq!(g.len(), 36 * 72);
        assert_eq!(Grid::global_cell_centred(1.0).len(), 64_800);
    }
}
