//! The named grids of benchmarks and reference exports: `storm1996` (the regional grid
//! of the real test files, its corners masked as their pressure field is) and global
//! cell-centred grids by spacing. One registry, so a name means one grid everywhere.

use super::Grid;
use crate::error::InputError;

/// The regional grid of the storm1996 files: 33 x 36, lat 20..60 every 1.25 deg,
/// lon -140..-52.5 every 2.5 deg, with the four corners masked (18.9% of the cells,
/// as the real pressure field).
pub fn storm1996_grid() -> (Grid, Vec<bool>) {
    let grid = Grid {
        lat: (0..33).map(|i| 20.0 + 1.25 * i as f64).collect(),
        lon: (0..36).map(|j| -140.0 + 2.5 * j as f64).collect(),
        global: false,
    };
    let (nlat, nlon) = (grid.nlat(), grid.nlon());
    // The triangular corner cut of `generate-data --fill-corners`, sized to 18.9%.
    let c = (0.189f64 / 2.0).sqrt();
    let valid = (0..grid.len())
        .map(|k| {
            let y = (k / nlon) as f64 / (nlat - 1) as f64;
            let x = (k % nlon) as f64 / (nlon - 1) as f64;
            ![x + y, 1.0 - x + y, x + 1.0 - y, 2.0 - x - y]
                .iter()
                .any(|&d| d < c)
        })
        .collect();
    (grid, valid)
}

/// A grid argument: `storm1996`, or a global spacing in degrees. Returns the name
/// the report uses, the grid and its valid cells.
pub fn named_grid(spec: &str) -> Result<(String, Grid, Vec<bool>), InputError> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("storm1996") {
        let (g, v) = storm1996_grid();
        return Ok(("storm1996".into(), g, v));
    }
    let deg: f64 = spec.trim_end_matches("deg").parse().map_err(|_| {
        InputError(format!(
            "unknown grid '{spec}' (expected a spacing in degrees such as 5, 2.5, 1, or storm1996)"
        ))
    })?;
    if !(deg > 0.0 && deg <= 30.0 && (180.0 / deg).fract().abs() < 1e-9) {
        return Err(InputError(format!(
            "grid spacing {deg} must divide 180 degrees and be in (0, 30]"
        )));
    }
    let grid = Grid::global_cell_centred(deg);
    let n = grid.len();
    Ok((format!("global-{deg}"), grid, vec![true; n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_parse() {
        assert_eq!(named_grid("5").unwrap().1.len(), 36 * 72);
        assert_eq!(named_grid("2.5").unwrap().0, "global-2.5");
        assert_eq!(named_grid("1").unwrap().1.len(), 64_800);
        let (name, g, valid) = named_grid("storm1996").unwrap();
        assert_eq!((name.as_str(), g.nlat(), g.nlon()), ("storm1996", 33, 36));
        let masked = valid.iter().filter(|v| !**v).count() as f64 / valid.len() as f64;
        assert!((0.15..0.22).contains(&masked), "{masked}");
        assert!(named_grid("7").is_err());
        assert!(named_grid("europe").is_err());
    }
}
