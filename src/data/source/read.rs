//! Reading one time step of a described variable into canonical grid order, with the
//! packing applied and a validity mask.

use super::store::Store;
use super::SourceVariable;
use crate::error::InputError;

impl SourceVariable {
    /// Reads time step `t` of every channel into `values` (`[channel][lat][lon]`, canonical
    /// grid order) and `valid`; missing cells get 0.0 and `false`.
    pub fn read_step(
        &self,
        file: &Store,
        t: usize,
        values: &mut [f32],
        valid: &mut [bool],
    ) -> anyhow::Result<()> {
        let var = file.variable(&self.var_name).ok_or_else(|| {
            InputError::file(&self.path, format!("variable '{}' vanished", self.var_name))
        })?;
        let (nlat, nlon) = self.grid_shape();
        let cells = nlat * nlon;
        let level_indices: Vec<Option<usize>> = if self.levels.is_empty() {
            vec![None]
        } else {
            self.levels.iter().map(|l| Some(l.index)).collect()
        };
        for (c, level) in level_indices.iter().enumerate() {
            let ranges: Vec<std::ops::Range<usize>> = self
                .dims
                .iter()
                .enumerate()
                .map(|(d, &(_, len))| {
                    if d == self.layout.time_dim {
                        t..t + 1
                    } else if Some(d) == self.layout.level_dim {
                        let l = level.unwrap_or(0);
                        l..l + 1
                    } else if d == self.layout.lat_dim || d == self.layout.lon_dim {
                        0..len
                    } else {
                        0..1
                    }
                })
                .collect();
            let raw: Vec<f64> = var.read(&ranges).map_err(|e| {
                InputError::file(
                    &self.path,
                    format!("cannot read '{}' at time step {t}: {e}", self.var_name),
                )
            })?;
            // Strides of the lat and lon dimensions inside the hyperslab just read.
            let stride = |dim: usize| -> usize {
                self.dims[dim + 1..]
                    .iter()
                    .enumerate()
                    .map(|(k, &(_, len))| {
                        let d = dim + 1 + k;
                        if d == self.layout.lat_dim || d == self.layout.lon_dim {
                            len
                        } else {
                            1
                        }
                    })
                    .product()
            };
            let (s_lat, s_lon) = (stride(self.layout.lat_dim), stride(self.layout.lon_dim));
            let out_v = &mut values[c * cells..(c + 1) * cells];
            let out_m = &mut valid[c * cells..(c + 1) * cells];
            for (i, &fi) in self.lat.file_index.iter().enumerate() {
                for (j, &fj) in self.lon.file_index.iter().enumerate() {
                    let k = i * nlon + j;
                    match self.packing.decode(raw[fi * s_lat + fj * s_lon]) {
                        Some(v) => {
                            out_v[k] = v;
                            out_m[k] = true;
                        }
                        None => {
                            out_v[k] = 0.0;
                            out_m[k] = false;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
