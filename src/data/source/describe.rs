//! Describing one variable of an open file: its dimensions, grid, time axis, levels
//! and packing, gathered into a [`SourceVariable`] without reading its values.

use std::path::Path;

use super::attributes::attr_string;
use super::axes::read_horizontal_axes;
use super::cf::read_packing;
use super::layout::locate_dimensions;
use super::levels::select_levels;
use super::roles::gridded_variables;
use super::store::{Store, Var};
use super::time_axis::decode_time;
use super::{ReadOptions, Result, SourceVariable};
use crate::data::time::TimeAxis;
use crate::error::InputError;

/// Describes variable `var_name` of the open file at `path`.
pub fn describe_variable(
    file: &Store,
    path: &Path,
    var_name: &str,
    alias: Option<&str>,
    opts: &ReadOptions,
) -> Result<SourceVariable> {
    describe(file, path, (var_name, alias, true), opts)
}

/// Describes a static field (land-sea mask, orography): a lat/lon grid with no time
/// dimension or a time dimension of length 1, and at most one level.
pub fn describe_static(
    file: &Store,
    path: &Path,
    var_name: &str,
    alias: Option<&str>,
    opts: &ReadOptions,
) -> Result<SourceVariable> {
    let source = describe(file, path, (var_name, alias, false), opts)?;
    let problem = if source.time.len() > 1 {
        format!(
            "'{var_name}' has {} time steps: a static field has none or one",
            source.time.len()
        )
    } else if source.levels.len() > 1 {
        format!(
            "'{var_name}' has {} levels selected: a static field has one (pick it with --levels)",
            source.levels.len()
        )
    } else {
        return Ok(source);
    };
    Err(InputError::file(path, problem))
}

fn describe(
    file: &Store,
    path: &Path,
    (var_name, alias, needs_time): (&str, Option<&str>, bool),
    opts: &ReadOptions,
) -> Result<SourceVariable> {
    let err = |problem: String| InputError::file(path, problem);
    let var = find_numeric_variable(file, var_name).map_err(err)?;
    let dims = var.dims();
    let layout = locate_dimensions(file, &var, (var_name, needs_time), &dims).map_err(err)?;
    let levels = select_levels(
        file,
        &dims,
        layout.level_dim,
        opts.levels.as_ref(),
        var_name,
    )
    .map_err(err)?;
    let (lat, lon, global) =
        read_horizontal_axes(file, &dims, &layout, opts.region.as_ref()).map_err(err)?;
    let (time, time_note) = match layout.time_dim {
        Some(d) => decode_time(file, &dims[d].0, opts.time_units.as_deref()).map_err(err)?,
        None => (TimeAxis::default(), None),
    };
    let packing = read_packing(&var);

    Ok(SourceVariable {
        path: path.to_path_buf(),
        var_name: var_name.to_string(),
        name: alias.unwrap_or(var_name).to_string(),
        units: attr_string(&var, "units"),
        long_name: attr_string(&var, "long_name").or_else(|| attr_string(&var, "standard_name")),
        standard_name: attr_string(&var, "standard_name"),
        dims,
        lat,
        lon,
        global,
        time,
        time_note,
        packing,
        levels,
        layout,
    })
}

/// Looks up `var_name` and requires it to hold numbers; when it is missing, the
/// problem lists the file's variables so the user can pick the right name.
fn find_numeric_variable<'f>(
    file: &'f Store,
    var_name: &str,
) -> std::result::Result<Var<'f>, String> {
    let Some(var) = file.variable(var_name) else {
        let mut names = gridded_variables(file);
        if names.is_empty() {
            names = file.variables().iter().map(|v| v.name()).collect();
        }
        return Err(format!(
            "no variable '{var_name}' (the file has: {})",
            names.join(", ")
        ));
    };
    if !var.is_numeric() {
        return Err(format!("variable '{var_name}' is not numeric"));
    }
    Ok(var)
}
