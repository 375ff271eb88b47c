//! Vertical levels: choosing the levels of a multi-level variable that the user asked
//! for (`--levels 500,850`, `300..700`, `all`), and naming the channel of each
//! (`variable` + level value, e.g. `t850`).

use serde::{Deserialize, Serialize};

use super::axes::coordinate_values;

/// A selected vertical level: index in the file and the name suffix of its channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelSelection {
    pub index: usize,
    pub value: f64,
}

/// Which levels to take: a list of coordinate values and inclusive `LO..HI` ranges, or
/// every level (`all`). Stored in run.json and configs as a list of numbers when it is
/// one (as before ranges existed), else as its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LevelsText", into = "LevelsText")]
pub struct LevelChoice {
    items: Vec<LevelItem>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum LevelItem {
    All,
    Value(f64),
    /// Every level whose value lies in `lo..=hi` (either order given).
    Range(f64, f64),
}

/// How a [`LevelChoice`] is written in JSON and TOML.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum LevelsText {
    Values(Vec<f64>),
    Text(String),
}

impl TryFrom<LevelsText> for LevelChoice {
    type Error = String;

    fn try_from(t: LevelsText) -> Result<Self, String> {
        match t {
            LevelsText::Values(v) => Ok(LevelChoice::values(v)),
            LevelsText::Text(s) => s.parse(),
        }
    }
}

impl From<LevelChoice> for LevelsText {
    fn from(c: LevelChoice) -> LevelsText {
        let values: Option<Vec<f64>> = c
            .items
            .iter()
            .map(|i| match i {
                LevelItem::Value(v) => Some(*v),
                _ => None,
            })
            .collect();
        match values {
            Some(v) => LevelsText::Values(v),
            None => LevelsText::Text(c.to_string()),
        }
    }
}

impl LevelChoice {
    pub fn values(values: Vec<f64>) -> LevelChoice {
        let items = values.into_iter().map(LevelItem::Value).collect();
        LevelChoice { items }
    }
}

impl std::str::FromStr for LevelChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |t: &str| {
            t.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("--levels: '{}' is not a level value", t.trim()))
        };
        let items = text
            .split(',')
            .map(|item| match item.trim() {
                "all" => Ok(LevelItem::All),
                t => match t.split_once("..") {
                    Some((lo, hi)) => Ok(LevelItem::Range(number(lo)?, number(hi)?)),
                    None => Ok(LevelItem::Value(number(t)?)),
                },
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(LevelChoice { items })
    }
}

impl std::fmt::Display for LevelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self
            .items
            .iter()
            .map(|i| match i {
                LevelItem::All => "all".to_string(),
                LevelItem::Value(v) => format_level(*v),
                LevelItem::Range(lo, hi) => format!("{}..{}", format_level(*lo), format_level(*hi)),
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

/// Selects the levels `wanted` on dimension `level_dim`; a single level is taken as
/// is, and several need a choice.
pub(super) fn select_levels(
    file: &super::store::Store,
    dims: &[(String, usize)],
    level_dim: Option<usize>,
    wanted: Option<&LevelChoice>,
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
        let l: Vec<String> = values.iter().map(|v| format_level(*v)).collect();
        l.join(", ")
    };
    let Some(wanted) = wanted else {
        return Err(format!(
            "variable '{var_name}' has {len} levels on '{name}' ({}); choose some with --levels \
             (values, LO..HI ranges, or all)",
            listing()
        ));
    };
    let mut out: Vec<LevelSelection> = Vec::new();
    for item in &wanted.items {
        let found = match_item(&values, *item);
        if found.is_empty() {
            return Err(format!(
                "variable '{var_name}' has no level {} on '{name}' (it has {})",
                LevelChoice { items: vec![*item] },
                listing()
            ));
        }
        for level in found {
            if !out.iter().any(|l| l.index == level.index) {
                out.push(level);
            }
        }
    }
    Ok(out)
}

/// The levels of `values` (the file's, in its order) that `item` names. Pressure stored
/// in Pa while the user speaks hPa (or the reverse) still matches.
fn match_item(values: &[f64], item: LevelItem) -> Vec<LevelSelection> {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
    let pick = |keep: &dyn Fn(f64) -> bool| -> Vec<LevelSelection> {
        let at = |i: usize| LevelSelection {
            index: i,
            value: values[i],
        };
        (0..values.len())
            .filter(|&i| keep(values[i]))
            .map(at)
            .collect()
    };
    let scaled = |keep: &dyn Fn(f64) -> bool| -> Vec<LevelSelection> {
        [1.0, 0.01, 100.0]
            .into_iter()
            .map(|s| pick(&|v| keep(v * s)))
            .find(|found| !found.is_empty())
            .unwrap_or_default()
    };
    match item {
        LevelItem::All => pick(&|_| true),
        LevelItem::Value(w) => {
            // The channel is named by the value the user asked for.
            let mut found = scaled(&|v| close(v, w));
            found.truncate(1);
            found.iter_mut().for_each(|l| l.value = w);
            found
        }
        LevelItem::Range(a, b) => {
            let (lo, hi) = (a.min(b), a.max(b));
            scaled(&|v| (lo - 1e-9..=hi + 1e-9).contains(&v))
        }
    }
}

/// A level value as it appears in a channel name: `500`, or `0.5`.
pub(super) fn format_level(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
