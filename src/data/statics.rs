//! Static fields (land-sea mask, orography, anything time-invariant on the data's
//! grid) read from files and given to the model beside the states, as GraphCast does.
//! Each is normalised over its valid cells (mean 0, std 1; a constant field is only
//! centred) and enters as its value (0 where missing) and a validity flag. Regridding
//! is not done: a field on another grid is refused with both grids named.

use super::dataset::check_same_grid;
use super::grid::Grid;
use super::source::{describe_static, open_file, ReadOptions, SourceVariable};
use super::spec::VarPick;
use crate::error::InputError;

/// The static fields of a dataset on its grid.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaticFields {
    /// Each field's name (its alias if given).
    pub names: Vec<String>,
    /// `[cell][2 * fields]`: the normalised values, then the validity flags (1 or 0).
    pub features: Vec<f32>,
}

impl StaticFields {
    pub fn count(&self) -> usize {
        self.names.len()
    }

    /// Features per cell.
    pub fn width(&self) -> usize {
        2 * self.count()
    }

    /// The features of `cells`, in their order (`[cell][width]`).
    pub fn of_cells(&self, cells: &[u32]) -> Vec<f32> {
        let w = self.width();
        cells
            .iter()
            .flat_map(|&c| &self.features[c as usize * w..(c as usize + 1) * w])
            .copied()
            .collect()
    }
}

/// Describes every picked static field (metadata only).
pub fn describe(picks: &[VarPick], opts: &ReadOptions) -> anyhow::Result<Vec<SourceVariable>> {
    picks
        .iter()
        .map(|p| {
            let file = open_file(&p.path)?;
            Ok(describe_static(
                &file,
                &p.path,
                &p.name,
                p.alias.as_deref(),
                opts,
            )?)
        })
        .collect()
}

/// Reads `sources` on `grid` (the data's, described by `first`), normalised.
pub fn load(
    sources: &[SourceVariable],
    grid: &Grid,
    first: &SourceVariable,
) -> anyhow::Result<StaticFields> {
    let cells = grid.len();
    let width = 2 * sources.len();
    let mut features = vec![0f32; cells * width];
    for (k, s) in sources.iter().enumerate() {
        check_same_grid(first, s, grid).map_err(|e| {
            InputError(format!(
                "{e}: static field '{}' is not regridded; put it on the data's grid first (e.g. cdo remapbil, xESMF)",
                s.var_name
            ))
        })?;
        let mut values = vec![0f32; cells];
        let mut valid = vec![false; cells];
        s.read_step(&open_file(&s.path)?, 0, &mut values, &mut valid)?;
        let (mean, std) = moments(&values, &valid).ok_or_else(|| {
            InputError::file(
                &s.path,
                format!("static field '{}' has no valid value", s.var_name),
            )
        })?;
        for c in 0..cells {
            if valid[c] {
                features[c * width + k] = ((values[c] as f64 - mean) / std) as f32;
                features[c * width + sources.len() + k] = 1.0;
            }
        }
    }
    Ok(StaticFields {
        names: sources.iter().map(|s| s.name.clone()).collect(),
        features,
    })
}

/// Mean and standard deviation of the valid values (std 1 for a constant field).
fn moments(values: &[f32], valid: &[bool]) -> Option<(f64, f64)> {
    let picked: Vec<f64> = values
        .iter()
        .zip(valid)
        .filter(|(_, &ok)| ok)
        .map(|(&v, _)| v as f64)
        .collect();
    if picked.is_empty() {
        return None;
    }
    let n = picked.len() as f64;
    let mean = picked.iter().sum::<f64>() / n;
    let var = picked.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    Some((mean, if std > 0.0 { std } else { 1.0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_skip_masked_cells_and_a_constant_field_is_only_centred() {
        let (m, s) = moments(&[1.0, 3.0, 100.0], &[true, true, false]).unwrap();
        assert_eq!((m, s), (2.0, 1.0));
        assert_eq!(moments(&[5.0, 5.0], &[true, true]), Some((5.0, 1.0)));
        assert_eq!(moments(&[5.0], &[false]), None);
    }

    #[test]
    fn cells_are_picked_in_order() {
        let fields = StaticFields {
            names: vec!["lsm".into()],
            features: vec![0.5, 1.0, -0.5, 1.0, 0.0, 0.0],
        };
        assert_eq!(fields.of_cells(&[2, 0]), vec![0.0, 0.0, 0.5, 1.0]);
    }
}
