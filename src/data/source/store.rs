//! The containers meshcast reads gridded data from, behind one small interface: a
//! NetCDF file or a Zarr store (v2 or v3, on local disk). Everything above (dimension
//! roles, axes, time, levels, packing, reading a time step) sees named variables with
//! named dimensions, attributes and hyperslab reads, whatever holds them.

use std::ops::Range;

use netcdf::types::{FloatType, IntType, NcVariableType};
use netcdf::AttributeValue;

use super::zarr::{ZarrArray, ZarrStore};

/// An open NetCDF file or Zarr store.
pub enum Store {
    NetCdf(netcdf::File),
    Zarr(ZarrStore),
}

/// One variable (NetCDF) or array (Zarr) of a store.
pub enum Var<'s> {
    NetCdf(netcdf::Variable<'s>),
    Zarr(&'s ZarrArray),
}

/// The type of a variable's stored values, as far as meshcast cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    F32,
    F64,
    /// Integers of up to 32 bits.
    I32,
    I64,
    /// Text or anything else that is not a number.
    Other,
}

impl Store {
    pub fn variable(&self, name: &str) -> Option<Var<'_>> {
        match self {
            Store::NetCdf(f) => f.variable(name).map(Var::NetCdf),
            Store::Zarr(z) => z.array(name).map(Var::Zarr),
        }
    }

    /// Every variable, in the store's order.
    pub fn variables(&self) -> Vec<Var<'_>> {
        match self {
            Store::NetCdf(f) => f.variables().map(Var::NetCdf).collect(),
            Store::Zarr(z) => z.arrays().map(Var::Zarr).collect(),
        }
    }

    /// The length of dimension `name`, if a variable has it.
    pub fn dimension_len(&self, name: &str) -> Option<usize> {
        match self {
            Store::NetCdf(f) => f.dimension_len(name),
            Store::Zarr(z) => z.dimension_len(name),
        }
    }
}

impl Var<'_> {
    pub fn name(&self) -> String {
        match self {
            Var::NetCdf(v) => v.name(),
            Var::Zarr(a) => a.name().to_string(),
        }
    }

    /// `(name, length)` of each dimension, outermost first.
    pub fn dims(&self) -> Vec<(String, usize)> {
        match self {
            Var::NetCdf(v) => v.dimensions().iter().map(|d| (d.name(), d.len())).collect(),
            Var::Zarr(a) => a.dims(),
        }
    }

    pub fn value_kind(&self) -> ValueKind {
        match self {
            Var::NetCdf(v) => match v.vartype() {
                NcVariableType::Float(FloatType::F32) => ValueKind::F32,
                NcVariableType::Float(FloatType::F64) => ValueKind::F64,
                NcVariableType::Int(IntType::I8 | IntType::I16 | IntType::I32 | IntType::U8) => {
                    ValueKind::I32
                }
                NcVariableType::Int(_) => ValueKind::I64,
                _ => ValueKind::Other,
            },
            Var::Zarr(a) => a.value_kind(),
        }
    }

    /// Holds integers or floats (not chars or strings).
    pub fn is_numeric(&self) -> bool {
        self.value_kind() != ValueKind::Other
    }

    /// Attribute `name`, as NetCDF types it (Zarr's JSON attributes mapped onto them).
    pub fn attribute(&self, name: &str) -> Option<AttributeValue> {
        match self {
            Var::NetCdf(v) => v.attribute_value(name)?.ok(),
            Var::Zarr(a) => a.attribute(name),
        }
    }

    /// Every attribute, in the store's order.
    pub fn attributes(&self) -> Vec<(String, AttributeValue)> {
        match self {
            Var::NetCdf(v) => v
                .attributes()
                .filter_map(|a| Some((a.name().to_string(), a.value().ok()?)))
                .collect(),
            Var::Zarr(a) => a.attributes(),
        }
    }

    /// The values in `ranges` (one per dimension), row-major, as f64.
    pub fn read(&self, ranges: &[Range<usize>]) -> Result<Vec<f64>, String> {
        match self {
            Var::NetCdf(v) => {
                let extents: Vec<netcdf::Extent> =
                    ranges.iter().map(|r| r.clone().into()).collect();
                v.get_values::<f64, _>(extents.as_slice())
                    .map_err(|e| e.to_string())
            }
            Var::Zarr(a) => a.read(ranges),
        }
    }

    /// Every value, row-major, as f64.
    pub fn read_all(&self) -> Result<Vec<f64>, String> {
        let ranges: Vec<Range<usize>> = self.dims().iter().map(|(_, len)| 0..*len).collect();
        self.read(&ranges)
    }

    /// The text of a NetCDF char variable (such as storm1996's `reftime`).
    pub fn chars(&self) -> Option<String> {
        let Var::NetCdf(v) = self else { return None };
        if !matches!(v.vartype(), NcVariableType::Char) {
            return None;
        }
        let bytes: Vec<u8> = v.get_raw_values(..).ok()?;
        let text = String::from_utf8_lossy(&bytes);
        Some(text.trim_matches(char::from(0)).trim().to_string())
    }
}
