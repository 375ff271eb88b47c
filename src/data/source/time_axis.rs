//! The time axis of a variable: CF time units and calendar, or for a file that is not
//! CF, a reference time found elsewhere in it (or given with `--time-units`).

use super::attributes::attr_string;
use super::store::{Store, Var};
use crate::data::time::{Calendar, DateTime, TimeAxis, TimeUnits};

/// Decodes the time axis of dimension `dim`, CF or not; the note says how, if not CF.
pub(super) fn decode_time(
    file: &Store,
    dim: &str,
    override_units: Option<&str>,
) -> std::result::Result<(TimeAxis, Option<String>), String> {
    let var = file.variable(dim);
    let calendar = match var.as_ref().and_then(|v| attr_string(v, "calendar")) {
        Some(c) => Calendar::parse(&c)?,
        None => Calendar::ProlepticGregorian,
    };
    let len = file.dimension_len(dim).unwrap_or(0);
    let values: Vec<f64> = match &var {
        Some(v) if v.dims().len() == 1 && v.is_numeric() => v
            .read_all()
            .map_err(|e| format!("cannot read time variable '{dim}': {e}"))?,
        _ => (0..len).map(|i| i as f64).collect(),
    };
    let cf_units = var
        .as_ref()
        .and_then(|v| attr_string(v, "units"))
        .filter(|u| u.contains(" since "));
    let (units, note) = match (override_units, cf_units) {
        (Some(o), own) => (
            TimeUnits::parse(o, calendar).map_err(|e| format!("--time-units: {e}"))?,
            Some(match own {
                Some(own) => {
                    format!("time axis '{dim}' read with --time-units '{o}', not its own '{own}'")
                }
                None => format!("time axis '{dim}' read with --time-units '{o}'"),
            }),
        ),
        (None, Some(u)) => (
            TimeUnits::parse(&u, calendar).map_err(|e| format!("time axis '{dim}': {e}"))?,
            None,
        ),
        (None, None) => {
            let (ref_name, ref_text) = reference_time_text(file, var.as_ref()).ok_or_else(|| {
                format!(
                    "time axis '{dim}' has no CF units ('<unit> since <date>') and no reference time; \
                     give one with --time-units 'hours since YYYY-MM-DD hh:mm'"
                )
            })?;
            let reference = DateTime::parse(&ref_text, calendar)
                .map_err(|e| format!("reference time '{ref_name}': {e}"))?;
            let units = TimeUnits::hours_since(reference, calendar);
            let note = format!(
                "time axis '{dim}' is not CF: read as hours since {reference} from '{ref_name}' \
                 (override with --time-units)"
            );
            (units, Some(note))
        }
    };
    let instants = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            units
                .instant(v)
                .map_err(|e| format!("time axis '{dim}', step {i}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if let Some(k) = instants.windows(2).position(|w| w[1] <= w[0]) {
        return Err(format!(
            "time axis '{dim}' is not monotonic: step {} ({}) is not after step {} ({})",
            k + 1,
            values[k + 1],
            k,
            values[k]
        ));
    }
    Ok((TimeAxis { calendar, instants }, note))
}

/// A text reference time: a char variable such as `reftime`, or an attribute of the time variable.
fn reference_time_text(file: &Store, time_var: Option<&Var>) -> Option<(String, String)> {
    const NAMES: &[&str] = &[
        "reftime",
        "reference_time",
        "ref_time",
        "base_time",
        "forecast_reference_time",
        "time_origin",
    ];
    for name in NAMES {
        if let Some(v) = file.variable(name) {
            if let Some(text) = v.chars() {
                return Some((name.to_string(), text));
            }
            if let Some(t) = attr_string(&v, "units").filter(|u| u.contains(" since ")) {
                return Some((name.to_string(), t.split(" since ").nth(1)?.to_string()));
            }
        }
        if let Some(t) = time_var.and_then(|tv| attr_string(tv, name)) {
            return Some((format!("attribute {name}"), t));
        }
    }
    None
}
