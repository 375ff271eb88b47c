//! Zarr stores on local disk (format v2 and v3), as WeatherBench2 and anemoi publish
//! them: a root group whose arrays are its direct children, each with named dimensions
//! (v2: the `_ARRAY_DIMENSIONS` attribute xarray writes; v3: `dimension_names`) and
//! CF attributes. Metadata is read from the JSON documents; values are decoded by the
//! `zarrs` crate, chunk by chunk, only for the chunks a read touches.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use netcdf::AttributeValue;
use serde_json::{Map, Value};
use zarrs::array::{Array, ArraySubset};
use zarrs::filesystem::FilesystemStore;
use zarrs::storage::ReadableStorageTraits;

use super::store::ValueKind;
use super::Result;
use crate::error::InputError;

/// Whether `path` is a Zarr store: a directory with v2 or v3 metadata at its root.
pub fn is_zarr_store(path: &Path) -> bool {
    path.is_dir()
        && [".zgroup", ".zarray", ".zmetadata", "zarr.json"]
            .iter()
            .any(|name| path.join(name).is_file())
}

/// An open store: its arrays, described.
pub struct ZarrStore {
    arrays: Vec<ZarrArray>,
}

/// One array of a store.
pub struct ZarrArray {
    name: String,
    dims: Vec<(String, usize)>,
    attributes: Map<String, Value>,
    kind: ValueKind,
    /// The stored element type (v2 `dtype` or v3 `data_type`, byte order stripped).
    dtype: String,
    array: Array<dyn ReadableStorageTraits>,
}

impl ZarrStore {
    /// Opens the store at `path` and describes every array directly under its root.
    pub fn open(path: &Path) -> Result<ZarrStore> {
        let err = |problem: String| InputError::file(path, problem);
        let storage: Arc<dyn ReadableStorageTraits> = Arc::new(
            FilesystemStore::new(path)
                .map_err(|e| err(format!("cannot open the Zarr store: {e}")))?,
        );
        let mut names: Vec<String> = std::fs::read_dir(path)
            .map_err(|e| err(format!("cannot list the Zarr store: {e}")))?
            .filter_map(|entry| entry.ok())
            .filter(|entry| is_array_dir(&entry.path()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        let arrays = names
            .into_iter()
            .map(|name| ZarrArray::open(path, &storage, name).map_err(err))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if arrays.is_empty() {
            return Err(err("a Zarr store without arrays at its root".into()));
        }
        Ok(ZarrStore { arrays })
    }

    pub fn array(&self, name: &str) -> Option<&ZarrArray> {
        self.arrays.iter().find(|a| a.name == name)
    }

    pub fn arrays(&self) -> impl Iterator<Item = &ZarrArray> {
        self.arrays.iter()
    }

    /// The length of dimension `name` on the first array that has it.
    pub fn dimension_len(&self, name: &str) -> Option<usize> {
        self.arrays
            .iter()
            .flat_map(|a| &a.dims)
            .find(|(d, _)| d == name)
            .map(|(_, len)| *len)
    }
}

/// A v2 (`.zarray`) or v3 (`zarr.json` not of a group) array directory; a `zarr.json`
/// that cannot be read counts, so that opening it says what is wrong.
fn is_array_dir(dir: &Path) -> bool {
    if dir.join(".zarray").is_file() {
        return true;
    }
    let v3 = dir.join("zarr.json");
    v3.is_file()
        && !read_json(&v3)
            .is_ok_and(|m| m.get("node_type").and_then(Value::as_str) == Some("group"))
}

fn read_json(path: &PathBuf) -> std::result::Result<Map<String, Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("{}: not a JSON object", path.display())),
        Err(e) => Err(format!("{}: not JSON ({e})", path.display())),
    }
}

impl ZarrArray {
    fn open(
        root: &Path,
        storage: &Arc<dyn ReadableStorageTraits>,
        name: String,
    ) -> std::result::Result<ZarrArray, String> {
        let dir = root.join(&name);
        let v2 = dir.join(".zarray").is_file();
        let (meta, mut attributes) = if v2 {
            let attrs = read_json(&dir.join(".zattrs")).unwrap_or_default();
            (read_json(&dir.join(".zarray"))?, attrs)
        } else {
            let meta = read_json(&dir.join("zarr.json"))?;
            let attrs = match meta.get("attributes") {
                Some(Value::Object(a)) => a.clone(),
                _ => Map::new(),
            };
            (meta, attrs)
        };
        let shape: Vec<usize> = meta
            .get("shape")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(|n| n.as_u64().map(|n| n as usize))
                    .collect()
            })
            .ok_or_else(|| format!("array '{name}' has no shape"))?;
        let dim_names = dimension_names(&meta, &mut attributes, v2).ok_or_else(|| {
            format!(
                "array '{name}' has no dimension names (v2: the _ARRAY_DIMENSIONS attribute \
                 xarray writes; v3: dimension_names)"
            )
        })?;
        if dim_names.len() != shape.len() {
            return Err(format!(
                "array '{name}' names {} dimensions ({}) for a shape of {} ({shape:?})",
                dim_names.len(),
                dim_names.join(", "),
                shape.len()
            ));
        }
        if v2 {
            cf_fill_value_from_v2(&meta, &mut attributes);
        }
        decode_base64_fill_values(&mut attributes);
        let dtype = meta
            .get(if v2 { "dtype" } else { "data_type" })
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim_start_matches(['<', '>', '|', '='])
            .to_string();
        let array = Array::open(storage.clone(), &format!("/{name}"))
            .map_err(|e| format!("array '{name}': {e}"))?;
        Ok(ZarrArray {
            dims: dim_names.into_iter().zip(shape).collect(),
            name,
            attributes,
            kind: value_kind(&dtype),
            dtype,
            array,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dims(&self) -> Vec<(String, usize)> {
        self.dims.clone()
    }

    pub fn value_kind(&self) -> ValueKind {
        self.kind
    }

    pub fn attribute(&self, name: &str) -> Option<AttributeValue> {
        json_attribute(self.attributes.get(name)?)
    }

    pub fn attributes(&self) -> Vec<(String, AttributeValue)> {
        self.attributes
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), json_attribute(v)?)))
            .collect()
    }

    /// The values in `ranges`, row-major, as f64; only the chunks they touch are read.
    pub fn read(&self, ranges: &[Range<usize>]) -> std::result::Result<Vec<f64>, String> {
        let ranges: Vec<Range<u64>> = ranges
            .iter()
            .map(|r| r.start as u64..r.end as u64)
            .collect();
        let subset = ArraySubset::new_with_ranges(&ranges);
        let err = |e: zarrs::array::ArrayError| format!("array '{}': {e}", self.name);
        macro_rules! read_as {
            ($t:ty) => {
                self.array
                    .retrieve_array_subset::<Vec<$t>>(&subset)
                    .map_err(err)?
                    .into_iter()
                    .map(|v| v as f64)
                    .collect()
            };
        }
        Ok(match self.dtype.as_str() {
            "f4" | "float32" => read_as!(f32),
            "f8" | "float64" => read_as!(f64),
            "i1" | "int8" => read_as!(i8),
            "i2" | "int16" => read_as!(i16),
            "i4" | "int32" => read_as!(i32),
            "i8" | "int64" => read_as!(i64),
            "u1" | "uint8" => read_as!(u8),
            "u2" | "uint16" => read_as!(u16),
            "u4" | "uint32" => read_as!(u32),
            "u8" | "uint64" => read_as!(u64),
            other => {
                return Err(format!(
                    "array '{}': data type '{other}' is not numeric",
                    self.name
                ))
            }
        })
    }
}

/// Dimension names: v3 `dimension_names`, v2 the `_ARRAY_DIMENSIONS` attribute (taken out
/// of the attributes, as xarray hides it).
fn dimension_names(
    meta: &Map<String, Value>,
    attributes: &mut Map<String, Value>,
    v2: bool,
) -> Option<Vec<String>> {
    let names = if v2 {
        attributes.remove("_ARRAY_DIMENSIONS")?
    } else {
        meta.get("dimension_names")?.clone()
    };
    names
        .as_array()?
        .iter()
        .map(|n| n.as_str().map(String::from))
        .collect()
}

/// xarray writes a v2 variable's CF `_FillValue` as the array's `fill_value`; a null
/// fill value means none.
fn cf_fill_value_from_v2(meta: &Map<String, Value>, attributes: &mut Map<String, Value>) {
    if attributes.contains_key("_FillValue") {
        return;
    }
    match meta.get("fill_value") {
        None | Some(Value::Null) => {}
        Some(fill) => {
            attributes.insert("_FillValue".into(), fill.clone());
        }
    }
}

/// xarray writes a float `_FillValue` into Zarr v3 attributes as the base64 text of its
/// little-endian float64 bytes (`"AAAAAAAA+H8="` is NaN); those become numbers.
fn decode_base64_fill_values(attributes: &mut Map<String, Value>) {
    for key in ["_FillValue", "missing_value"] {
        let Some(Value::String(text)) = attributes.get(key) else {
            continue;
        };
        let value = match base64_bytes(text).as_deref() {
            Some(&[a, b, c, d, e, f, g, h]) => f64::from_le_bytes([a, b, c, d, e, f, g, h]),
            Some(&[a, b, c, d]) => f64::from(f32::from_le_bytes([a, b, c, d])),
            _ => continue,
        };
        let number = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(non_finite_text(value).into()));
        attributes.insert(key.into(), number);
    }
}

/// How JSON (and so Zarr) spells a non-finite number.
fn non_finite_text(v: f64) -> &'static str {
    match v {
        v if v.is_nan() => "NaN",
        v if v > 0.0 => "Infinity",
        _ => "-Infinity",
    }
}

/// Standard base64 (with `=` padding) to bytes; None for anything else.
fn base64_bytes(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let body = text.trim_end_matches('=');
    if !text.len().is_multiple_of(4) || text.len() - body.len() > 2 {
        return None;
    }
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in body.bytes() {
        bits = (bits << 6) | ALPHABET.iter().position(|&a| a == c)? as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

/// The kind of a v2 `dtype` (`f4`, `u1`, byte order stripped) or v3 `data_type`
/// (`float32`).
fn value_kind(dtype: &str) -> ValueKind {
    match dtype {
        "f4" | "float32" => ValueKind::F32,
        "f8" | "float64" => ValueKind::F64,
        "i1" | "i2" | "i4" | "u1" | "u2" | "int8" | "int16" | "int32" | "uint8" | "uint16" => {
            ValueKind::I32
        }
        "i8" | "u4" | "u8" | "int64" | "uint32" | "uint64" => ValueKind::I64,
        _ => ValueKind::Other,
    }
}

/// A JSON attribute as NetCDF would type it: text, a number or a list of numbers
/// (`"NaN"` and the infinities, as JSON writes them, are numbers).
fn json_attribute(value: &Value) -> Option<AttributeValue> {
    let number = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    };
    match value {
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => AttributeValue::Longlong(i),
            None => AttributeValue::Double(n.as_f64()?),
        }),
        Value::String(s) => Some(match number(value) {
            Some(x) => AttributeValue::Double(x),
            None => AttributeValue::Str(s.clone()),
        }),
        Value::Bool(b) => Some(AttributeValue::Str(b.to_string())),
        Value::Array(items) if items.iter().all(|v| v.is_string()) => Some(AttributeValue::Strs(
            items
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
        )),
        Value::Array(items) => Some(AttributeValue::Doubles(
            items.iter().map(number).collect::<Option<_>>()?,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xarrays_base64_fill_values_become_numbers() {
        let mut attrs = Map::new();
        attrs.insert("_FillValue".into(), Value::String("AAAAAAAA+H8=".into()));
        attrs.insert("missing_value".into(), Value::String("AAAAAAAA8D8=".into()));
        attrs.insert("units".into(), Value::String("K".into()));
        decode_base64_fill_values(&mut attrs);
        let fill = json_attribute(&attrs["_FillValue"]);
        assert!(matches!(fill, Some(AttributeValue::Double(v)) if v.is_nan()));
        assert_eq!(
            json_attribute(&attrs["missing_value"]),
            Some(AttributeValue::Double(1.0))
        );
        assert_eq!(attrs["units"], "K");
        assert_eq!(
            base64_bytes("AAAAAAAA+H8="),
            Some(f64::NAN.to_le_bytes().to_vec())
        );
        assert_eq!(base64_bytes("not base64!"), None);
    }

    #[test]
    fn dtypes_of_both_versions_have_their_kind() {
        assert_eq!(value_kind("f4"), ValueKind::F32);
        assert_eq!(value_kind("float64"), ValueKind::F64);
        assert_eq!(value_kind("i2"), ValueKind::I32);
        assert_eq!(value_kind("int64"), ValueKind::I64);
        assert_eq!(value_kind("U10"), ValueKind::Other);
    }
}
