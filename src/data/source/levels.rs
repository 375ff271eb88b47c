//! Vertical levels: choosing the levels of a multi-level variable that the user asked
//! for, and naming the channel of each.

use serde::Serialize;

use super::axes::coordinate_values;

/// A selected vertical level: index in the file and the name suffix of its channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelSelection {
    pub index: usize,
    pub value: f64,
}

/// Selects the levels `wanted` (coordinate values) on dimension `level_dim`; a single
/// level is taken as is, and several need a choice.
pub(super) fn select_levels(
    file: &netcdf::File,
    dims: &[(String, usize)],
    level_dim: Option<usize>,
    wanted: Option<&[f64]>,
    var_name: &str,
) -> std::result::Result<Vec<LevelSelection>, String> {
    let Some(d) = level_dim else {
        return Ok(vec![]);
    };
    let (name, len) = &dims[d];
    let values =
        coordinate_values(file, name).unwrap_or_else(|| (0..*len).map(|i| i as f64).collect());
    if *len == 1 {
        return Ok(vec![LevelSelection {
            index: 0,
            value: values[0],
        }]);
    }
    let listing = || {
        values
            .iter()
            .map(|v| format_level(*v))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(wanted) = wanted else {
        return Err(format!(
            "variable '{var_name}' has {len} levels on '{name}' ({}); choose some with --levels",
            listing()
        ));
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
    wanted
        .iter()
        .map(|&w| {
            // Pressure stored in Pa while the user speaks hPa (or the reverse) still matches.
            let hit = values
                .iter()
                .position(|&v| close(v, w))
                .or_else(|| values.iter().position(|&v| close(v, w * 100.0)))
                .or_else(|| values.iter().position(|&v| close(v * 100.0, w)));
            hit.map(|index| LevelSelection { index, value: w })
                .ok_or_else(|| {
                    format!(
                        "variable '{var_name}' has no level {w} on '{name}' (it has {})",
                        listing()
                    )
                })
        })
        .collect()
}

/// A level value as it appears in a channel name: `500`, or `0.5`.
pub(super) fn format_level(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
