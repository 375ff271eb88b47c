//! Reading a variable's metadata as plain values: its attributes as text or numbers,
//! and whether it holds numbers at all.

use netcdf::{AttributeValue, Variable};

/// Whether the variable holds integers or floats (not chars or strings).
pub(super) fn is_numeric(v: &Variable) -> bool {
    matches!(
        v.vartype(),
        netcdf::types::NcVariableType::Int(_) | netcdf::types::NcVariableType::Float(_)
    )
}

/// A text attribute; a list of strings is joined with spaces.
pub fn attr_string(v: &Variable, name: &str) -> Option<String> {
    match v.attribute_value(name)?.ok()? {
        AttributeValue::Str(s) => Some(s),
        AttributeValue::Strs(s) => Some(s.join(" ")),
        _ => None,
    }
}

/// A numeric attribute as f64 values, whatever its stored type; `None` for text.
pub fn attr_numbers(v: &Variable, name: &str) -> Option<Vec<f64>> {
    let value = v.attribute_value(name)?.ok()?;
    Some(match value {
        AttributeValue::Uchar(x) => vec![x as f64],
        AttributeValue::Schar(x) => vec![x as f64],
        AttributeValue::Ushort(x) => vec![x as f64],
        AttributeValue::Short(x) => vec![x as f64],
        AttributeValue::Uint(x) => vec![x as f64],
        AttributeValue::Int(x) => vec![x as f64],
        AttributeValue::Ulonglong(x) => vec![x as f64],
        AttributeValue::Longlong(x) => vec![x as f64],
        AttributeValue::Float(x) => vec![x as f64],
        AttributeValue::Double(x) => vec![x],
        AttributeValue::Uchars(x) => x.into_iter().map(f64::from).collect(),
        AttributeValue::Schars(x) => x.into_iter().map(f64::from).collect(),
        AttributeValue::Ushorts(x) => x.into_iter().map(f64::from).collect(),
        AttributeValue::Shorts(x) => x.into_iter().map(f64::from).collect(),
        AttributeValue::Uints(x) => x.into_iter().map(f64::from).collect(),
        AttributeValue::Ints(x) => x.into_iter().map(f64::from).collect(),
        AttributeValue::Ulonglongs(x) => x.into_iter().map(|v| v as f64).collect(),
        AttributeValue::Longlongs(x) => x.into_iter().map(|v| v as f64).collect(),
        AttributeValue::Floats(x) => x.into_iter().map(f64::from).collect(),
        AttributeValue::Doubles(x) => x,
        AttributeValue::Str(_) | AttributeValue::Strs(_) => return None,
    })
}
