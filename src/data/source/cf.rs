//! CF conventions for values: packing (`scale_factor`, `add_offset`) and the validity
//! rules (`_FillValue`, `missing_value`, valid range, float default fill).

use super::store::{ValueKind, Var};
use serde::Serialize;

use super::attributes::attr_numbers;

/// How raw stored numbers become values: CF packing and the validity rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Packing {
    pub scale_factor: f64,
    pub add_offset: f64,
    /// `_FillValue` and every `missing_value`, compared with raw values.
    pub missing: Vec<f64>,
    pub valid_min: Option<f64>,
    pub valid_max: Option<f64>,
    /// The variable is a float type: huge values (netCDF's default fill) are missing too.
    pub float_default_fill: bool,
}

impl Packing {
    /// `Some(value)` for a valid raw number, `None` for a missing one.
    #[inline]
    pub fn decode(&self, raw: f64) -> Option<f32> {
        if raw.is_nan()
            || self.missing.contains(&raw)
            || self.valid_min.is_some_and(|lo| raw < lo)
            || self.valid_max.is_some_and(|hi| raw > hi)
            || (self.float_default_fill && raw.abs() >= 9.9e36)
        {
            return None;
        }
        let v = raw * self.scale_factor + self.add_offset;
        v.is_finite().then_some(v as f32)
    }
}

/// Reads the packing and validity attributes of `var`.
pub(super) fn read_packing(var: &Var) -> Packing {
    let first = |name: &str| attr_numbers(var, name).and_then(|v| v.first().copied());
    let mut missing = attr_numbers(var, "_FillValue").unwrap_or_default();
    missing.extend(attr_numbers(var, "missing_value").unwrap_or_default());
    let (mut valid_min, mut valid_max) = (first("valid_min"), first("valid_max"));
    if let Some(range) = attr_numbers(var, "valid_range") {
        if range.len() == 2 {
            valid_min = Some(range[0]);
            valid_max = Some(range[1]);
        }
    }
    Packing {
        scale_factor: first("scale_factor").unwrap_or(1.0),
        add_offset: first("add_offset").unwrap_or(0.0),
        missing,
        valid_min,
        valid_max,
        float_default_fill: matches!(var.value_kind(), ValueKind::F32 | ValueKind::F64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_masks_and_scales() {
        let p = Packing {
            scale_factor: 0.5,
            add_offset: 100.0,
            missing: vec![-32767.0],
            valid_min: Some(-1000.0),
            valid_max: Some(1000.0),
            float_default_fill: false,
        };
        assert_eq!(p.decode(10.0), Some(105.0));
        assert_eq!(p.decode(-32767.0), None);
        assert_eq!(p.decode(1001.0), None);
        assert_eq!(p.decode(f64::NAN), None);
    }
}
