//! The horizontal coordinate axes: latitude and longitude values read from their
//! coordinate variables, normalized to canonical order and cut to the region.

use super::layout::Layout;
use super::store::Store;
use crate::data::grid::{normalize_latitudes, normalize_longitudes, AxisMap, Region};

/// Reads a 1-D coordinate variable as f64, if there is one for `dim`.
pub(super) fn coordinate_values(file: &Store, dim: &str) -> Option<Vec<f64>> {
    let v = file.variable(dim)?;
    if v.dims().len() != 1 || !v.is_numeric() {
        return None;
    }
    v.read_all().ok()
}

/// Reads and normalizes the latitude and longitude coordinates (cut to `region`),
/// returning `(lat, lon, global)`, and requires at least a 2 x 2 grid.
pub(super) fn read_horizontal_axes(
    file: &Store,
    dims: &[(String, usize)],
    layout: &Layout,
    region: Option<&Region>,
) -> std::result::Result<(AxisMap, AxisMap, bool), String> {
    let lat_name = &dims[layout.lat_dim].0;
    let lon_name = &dims[layout.lon_dim].0;
    let lat_raw = coordinate_values(file, lat_name)
        .ok_or_else(|| format!("no latitude values for dimension '{lat_name}'"))?;
    let lon_raw = coordinate_values(file, lon_name)
        .ok_or_else(|| format!("no longitude values for dimension '{lon_name}'"))?;
    let lat = normalize_latitudes(&lat_raw, region).map_err(|e| format!("'{lat_name}': {e}"))?;
    let (lon, global) =
        normalize_longitudes(&lon_raw, region).map_err(|e| format!("'{lon_name}': {e}"))?;
    if lat.values.len() < 2 || lon.values.len() < 2 {
        return Err(match region {
            Some(r) => format!(
                "the region {},{},{},{} keeps {} x {} cells of the grid; need at least 2 x 2",
                r.lat_min,
                r.lat_max,
                r.lon_min,
                r.lon_max,
                lat.values.len(),
                lon.values.len()
            ),
            None => "the grid has fewer than 2 latitudes or longitudes".to_string(),
        });
    }
    Ok((lat, lon, global))
}
