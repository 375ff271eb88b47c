//! Where a variable's latitude, longitude, time and level dimensions are, or why the
//! variable is not a latitude/longitude/time grid meshcast can read.

use super::attributes::attr_string;
use super::roles::{dim_role, is_lat_units, DimRole, LAT_NAMES};
use super::store::{Store, Var};

/// Positions of the dimensions in the variable's own order.
#[derive(Debug, Clone, Default)]
pub(super) struct Layout {
    /// None for a static field (no time dimension).
    pub(super) time_dim: Option<usize>,
    pub(super) lat_dim: usize,
    pub(super) lon_dim: usize,
    pub(super) level_dim: Option<usize>,
}

/// Finds which of the variable's dimensions are latitude, longitude, time and level,
/// or says why the variable is not a lat/lon/time grid (a lat/lon grid when
/// `needs_time` is false: a static field).
pub(super) fn locate_dimensions(
    file: &Store,
    var: &Var,
    (var_name, needs_time): (&str, bool),
    dims: &[(String, usize)],
) -> std::result::Result<Layout, String> {
    let roles: Vec<DimRole> = dims.iter().map(|(n, _)| dim_role(file, n)).collect();
    let find = |role: DimRole| roles.iter().position(|&r| r == role);

    let (Some(lat_dim), Some(lon_dim)) = (find(DimRole::Lat), find(DimRole::Lon)) else {
        return Err(explain_missing_grid(file, var, dims));
    };
    if roles.iter().filter(|&&r| r == DimRole::Lat).count() > 1
        || roles.iter().filter(|&&r| r == DimRole::Lon).count() > 1
    {
        return Err(format!(
            "variable '{var_name}' has more than one latitude or longitude dimension"
        ));
    }
    if let Some(lead) = find(DimRole::Lead) {
        return Err(format!(
            "variable '{var_name}' is a forecast with lead times on '{}': meshcast reads states \
             on one time axis; select one lead first (e.g. in xarray .sel({}=...))",
            dims[lead].0, dims[lead].0
        ));
    }
    let time_dim = find(DimRole::Time);
    if time_dim.is_none() && needs_time {
        return Err(format!(
            "variable '{var_name}' has no time dimension (dimensions: {})",
            dims.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let fixed = [lat_dim, lon_dim, time_dim.unwrap_or(lat_dim)];
    let level_dim = find_level_dim(dims, &roles, fixed, var_name)?;
    Ok(Layout {
        time_dim,
        lat_dim,
        lon_dim,
        level_dim,
    })
}

/// Picks the vertical dimension among those left after `horizontal_and_time`: at
/// most one may be vertical, and any other must have length 1.
fn find_level_dim(
    dims: &[(String, usize)],
    roles: &[DimRole],
    horizontal_and_time: [usize; 3],
    var_name: &str,
) -> std::result::Result<Option<usize>, String> {
    let mut level_dim = None;
    for (d, (name, len)) in dims.iter().enumerate() {
        if horizontal_and_time.contains(&d) {
            continue;
        }
        if roles[d] == DimRole::Level || (level_dim.is_none() && *len > 1) {
            if level_dim.is_some() {
                return Err(format!("variable '{var_name}' has two vertical dimensions"));
            }
            level_dim = Some(d);
        } else if *len != 1 {
            return Err(format!(
                "variable '{var_name}': dimension '{name}' of length {len} is not understood"
            ));
        }
    }
    Ok(level_dim)
}

/// Says why a variable has no lat/lon grid: unstructured, curvilinear, or unknown axes.
fn explain_missing_grid(file: &Store, var: &Var, dims: &[(String, usize)]) -> String {
    let names: Vec<&str> = dims.iter().map(|(n, _)| n.as_str()).collect();
    // A latitude variable that is a function of one of this variable's dimensions.
    for v in file.variables() {
        let vn = v.name().to_ascii_lowercase();
        let units = attr_string(&v, "units")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let sn = attr_string(&v, "standard_name").unwrap_or_default();
        let is_lat = sn == "latitude"
            || is_lat_units(&units)
            || LAT_NAMES.contains(&vn.as_str())
            || vn == "clat";
        if !is_lat {
            continue;
        }
        let vdims: Vec<String> = v.dims().into_iter().map(|(d, _)| d).collect();
        if vdims.len() == 1 && names.contains(&vdims[0].as_str()) && vdims[0] != v.name() {
            return format!(
                "variable '{}' is on an unstructured grid (1-D cell dimension '{}', latitude '{}' is a function of it); \
                 meshcast needs a regular latitude/longitude grid: regrid first (e.g. cdo remapbil)",
                var.name(),
                vdims[0],
                v.name()
            );
        }
        if vdims.len() == 2 && vdims.iter().all(|d| names.contains(&d.as_str())) {
            return format!(
                "variable '{}' is on a curvilinear grid (2-D latitude '{}'); meshcast needs a regular \
                 latitude/longitude grid: regrid first (e.g. cdo remapbil)",
                var.name(),
                v.name()
            );
        }
    }
    format!(
        "variable '{}' has no recognizable latitude/longitude dimensions (dimensions: {}); \
         expected coordinate variables with units degrees_north/degrees_east or names like lat/lon",
        var.name(),
        names.join(", ")
    )
}
