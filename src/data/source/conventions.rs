//! The input's own coordinate conventions (names, order, longitude range, value type and
//! attributes), so that what meshcast writes lines up with its input in xarray: a
//! forecast on a file with latitudes 90..-90 and longitudes 0..360 has exactly those
//! coordinates, and `forecast - truth` keeps the input's shape.

use netcdf::AttributeValue;

use super::axes::coordinate_values;
use super::store::{Store, ValueKind};
use super::{Result, SourceVariable};
use crate::error::InputError;

/// How a coordinate's values are stored, kept so the output compares equal to the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinateType {
    F32,
    F64,
    I32,
    I64,
}

/// A coordinate to write: dimension name, values in output order, type and attributes.
#[derive(Debug, Clone)]
pub struct OutputAxis {
    pub name: String,
    pub values: Vec<f64>,
    pub value_type: CoordinateType,
    pub attributes: Vec<(String, AttributeValue)>,
}

/// The horizontal axes as the input file has them, and where each canonical cell goes.
#[derive(Debug, Clone)]
pub struct HorizontalAxes {
    pub lat: OutputAxis,
    pub lon: OutputAxis,
    /// Output position of each canonical (ascending) latitude and longitude.
    pub lat_position: Vec<usize>,
    pub lon_position: Vec<usize>,
}

impl HorizontalAxes {
    /// Output index (`lat * nlon + lon`, in the file's order) of canonical cell `cell`.
    pub fn output_cell(&self, cell: usize) -> usize {
        let nlon = self.lon_position.len();
        self.lat_position[cell / nlon] * nlon + self.lon_position[cell % nlon]
    }
}

/// Attributes that describe stored numbers rather than the coordinate; the output
/// stores plain values, so copying them would misdescribe it.
const STORAGE_ATTRIBUTES: &[&str] = &[
    "_FillValue",
    "missing_value",
    "scale_factor",
    "add_offset",
    "valid_range",
    "valid_min",
    "valid_max",
    "actual_range",
    "bounds",
];

impl SourceVariable {
    /// The latitude and longitude axes as this variable's file stores them (cut to the
    /// region, in the file's order), read again from the file.
    pub fn horizontal_axes(&self) -> Result<HorizontalAxes> {
        let file = super::open_file(&self.path)?;
        let err = |p: String| InputError::file(&self.path, p);
        let (lat, lat_position) = file_ordered_axis(
            &file,
            &self.dims[self.layout.lat_dim].0,
            &self.lat.file_index,
            [
                ("standard_name", "latitude"),
                ("units", "degrees_north"),
                ("axis", "Y"),
            ],
        )
        .map_err(err)?;
        let (lon, lon_position) = file_ordered_axis(
            &file,
            &self.dims[self.layout.lon_dim].0,
            &self.lon.file_index,
            [
                ("standard_name", "longitude"),
                ("units", "degrees_east"),
                ("axis", "X"),
            ],
        )
        .map_err(err)?;
        Ok(HorizontalAxes {
            lat,
            lon,
            lat_position,
            lon_position,
        })
    }

    /// The vertical axis of a variable read with a level dimension: its selected levels
    /// in selection order (the order of the channels), with the file's values.
    pub fn level_axis(&self) -> Result<Option<OutputAxis>> {
        let Some(d) = self.layout.level_dim else {
            return Ok(None);
        };
        let file = super::open_file(&self.path)?;
        let name = &self.dims[d].0;
        let all = coordinate_values(&file, name)
            .unwrap_or_else(|| (0..self.dims[d].1).map(|i| i as f64).collect());
        let indices: Vec<usize> = self.levels.iter().map(|l| l.index).collect();
        let values = indices.iter().map(|&i| all[i]).collect();
        let (value_type, attributes) = coordinate_description(&file, name, [("axis", "Z")]);
        Ok(Some(OutputAxis {
            name: name.clone(),
            values,
            value_type,
            attributes,
        }))
    }
}

/// The file's coordinate values at `kept` file indices, in file order, and the output
/// position of each canonical index (`kept[k]` is the file index of canonical `k`).
fn file_ordered_axis(
    file: &Store,
    name: &str,
    kept: &[usize],
    defaults: [(&str, &str); 3],
) -> std::result::Result<(OutputAxis, Vec<usize>), String> {
    let all = coordinate_values(file, name)
        .ok_or_else(|| format!("no coordinate values for dimension '{name}'"))?;
    let mut order: Vec<usize> = (0..kept.len()).collect();
    order.sort_by_key(|&k| kept[k]);
    let mut position = vec![0; kept.len()];
    for (p, &k) in order.iter().enumerate() {
        position[k] = p;
    }
    let values = order.iter().map(|&k| all[kept[k]]).collect();
    let (value_type, attributes) = coordinate_description(file, name, defaults);
    let axis = OutputAxis {
        name: name.to_string(),
        values,
        value_type,
        attributes,
    };
    Ok((axis, position))
}

/// The coordinate variable's storage type and attributes (those describing storage
/// left out), with `defaults` added where the file has no such attribute.
fn coordinate_description<const N: usize>(
    file: &Store,
    name: &str,
    defaults: [(&str, &str); N],
) -> (CoordinateType, Vec<(String, AttributeValue)>) {
    let Some(var) = file.variable(name) else {
        let attributes = defaults
            .iter()
            .map(|(k, v)| (k.to_string(), AttributeValue::Str(v.to_string())))
            .collect();
        return (CoordinateType::F64, attributes);
    };
    let value_type = match var.value_kind() {
        ValueKind::F32 => CoordinateType::F32,
        ValueKind::I32 => CoordinateType::I32,
        ValueKind::I64 => CoordinateType::I64,
        ValueKind::F64 | ValueKind::Other => CoordinateType::F64,
    };
    let mut attributes: Vec<(String, AttributeValue)> = var
        .attributes()
        .into_iter()
        .filter(|(name, _)| !STORAGE_ATTRIBUTES.contains(&name.as_str()))
        .collect();
    for (key, value) in defaults {
        if !attributes.iter().any(|(k, _)| k == key) {
            attributes.push((key.to_string(), AttributeValue::Str(value.to_string())));
        }
    }
    (value_type, attributes)
}
