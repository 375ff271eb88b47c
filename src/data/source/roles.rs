//! What each dimension is (latitude, longitude, time, vertical level or other), from
//! its coordinate variable's CF attributes or else its name, and which variables of a
//! file lie on a latitude/longitude grid.

use super::attributes::attr_string;
use super::store::Store;

/// Names of the variables of a file that lie on a latitude/longitude grid (with a time
/// axis or, for static fields, without).
pub fn gridded_variables(file: &Store) -> Vec<String> {
    file.variables()
        .into_iter()
        .filter(|v| {
            let dims: Vec<String> = v.dims().into_iter().map(|(d, _)| d).collect();
            let is_coordinate = dims.len() == 1 && dims[0] == v.name();
            !is_coordinate
                && v.is_numeric()
                && dims.iter().any(|d| dim_role(file, d) == DimRole::Lat)
                && dims.iter().any(|d| dim_role(file, d) == DimRole::Lon)
        })
        .map(|v| v.name())
        .collect()
}

/// Of the gridded variables, those without a time dimension: static fields such as the
/// land-sea mask and surface geopotential that WeatherBench2's ERA5 stores carry.
pub fn static_fields(file: &Store) -> Vec<String> {
    gridded_variables(file)
        .into_iter()
        .filter(|name| {
            file.variable(name).is_some_and(|v| {
                v.dims()
                    .iter()
                    .all(|(d, _)| dim_role(file, d) != DimRole::Time)
            })
        })
        .collect()
}

/// What a dimension stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DimRole {
    Lat,
    Lon,
    Time,
    Level,
    /// A forecast's lead time (WeatherBench2's `prediction_timedelta`, CF `forecast_period`).
    Lead,
    Other,
}

/// Dimension names (lower case) that mean latitude, longitude, time and level when
/// the coordinate variable's attributes do not say.
pub(super) const LAT_NAMES: &[&str] = &[
    "lat",
    "latitude",
    "lats",
    "nav_lat",
    "xlat",
    "rlat",
    "grid_yt",
    "latitudes",
];
const LON_NAMES: &[&str] = &[
    "lon",
    "longitude",
    "lons",
    "long",
    "nav_lon",
    "xlong",
    "rlon",
    "grid_xt",
    "longitudes",
];
const TIME_NAMES: &[&str] = &[
    "time",
    "timestep",
    "times",
    "t",
    "valid_time",
    "time_counter",
    "date",
    "step_time",
];
const LEVEL_NAMES: &[&str] = &[
    "level",
    "lev",
    "levels",
    "plev",
    "pressure",
    "pressure_level",
    "isobaricinhpa",
    "levelist",
    "height",
    "z",
    "depth",
    "ilev",
    "alt",
    "altitude",
    "sigma",
    "hybrid",
];

pub(super) fn is_lat_units(u: &str) -> bool {
    matches!(
        u,
        "degrees_north" | "degree_north" | "degree_n" | "degrees_n" | "degreen" | "degreesn"
    )
}

fn is_lon_units(u: &str) -> bool {
    matches!(
        u,
        "degrees_east" | "degree_east" | "degree_e" | "degrees_e" | "degreee" | "degreese"
    )
}

/// What a dimension is, from its coordinate variable's CF attributes, else its name.
pub(super) fn dim_role(file: &Store, dim: &str) -> DimRole {
    if let Some(v) = file.variable(dim) {
        let sn = attr_string(&v, "standard_name")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let units = attr_string(&v, "units")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let axis = attr_string(&v, "axis")
            .unwrap_or_default()
            .to_ascii_uppercase();
        let degree_like = units.is_empty() || units.starts_with("degree");
        if sn == "latitude" || is_lat_units(&units) || (axis == "Y" && degree_like) {
            return DimRole::Lat;
        }
        if sn == "longitude" || is_lon_units(&units) || (axis == "X" && degree_like) {
            return DimRole::Lon;
        }
        if sn == "forecast_period" {
            return DimRole::Lead;
        }
        if sn == "time" || axis == "T" || units.contains(" since ") {
            return DimRole::Time;
        }
        if axis == "Z" || v.attribute("positive").is_some() {
            return DimRole::Level;
        }
    }
    let name = dim.to_ascii_lowercase();
    if LAT_NAMES.contains(&name.as_str()) {
        DimRole::Lat
    } else if LON_NAMES.contains(&name.as_str()) {
        DimRole::Lon
    } else if TIME_NAMES.contains(&name.as_str()) {
        DimRole::Time
    } else if LEVEL_NAMES.contains(&name.as_str()) {
        DimRole::Level
    } else if name == "prediction_timedelta" || name == "lead_time" {
        DimRole::Lead
    } else {
        DimRole::Other
    }
}
