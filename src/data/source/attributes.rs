//! Reading a variable's attributes as plain values: text or numbers.

use netcdf::AttributeValue;

use super::store::Var;

/// A text attribute; a list of strings is joined with spaces.
pub fn attr_string(v: &Var, name: &str) -> Option<String> {
    match v.attribute(name)? {
        AttributeValue::Str(s) => Some(s),
        AttributeValue::Strs(s) => Some(s.join(" ")),
        _ => None,
    }
}

/// A numeric attribute as f64 values, whatever its stored type; `None` for text.
pub fn attr_numbers(v: &Var, name: &str) -> Option<Vec<f64>> {
    let value = v.attribute(name)?;
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
