//! Reading one time step of a described variable into canonical grid order, with the
//! packing applied and a validity mask.

use std::ops::Range;

use super::store::Store;
use super::SourceVariable;
use crate::error::InputError;

impl SourceVariable {
    /// Reads time step `t` of every channel into `values` (`[channel][lat][lon]`, canonical
    /// grid order) and `valid`; missing cells get 0.0 and `false`. All selected levels
    /// come from one read, so a chunk holding several levels (as WeatherBench2's Zarr
    /// stores have) is decoded once per step, not once per level.
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
        let levels: Vec<usize> = self.levels.iter().map(|l| l.index).collect();
        let level_span = match (levels.iter().min(), levels.iter().max()) {
            (Some(&lo), Some(&hi)) => lo..hi + 1,
            _ => 0..1,
        };
        let ranges: Vec<Range<usize>> = (0..self.dims.len())
            .map(|d| self.range_of(d, t, &level_span))
            .collect();
        let raw: Vec<f64> = var.read(&ranges).map_err(|e| {
            InputError::file(
                &self.path,
                format!("cannot read '{}' at time step {t}: {e}", self.var_name),
            )
        })?;
        // Row-major strides of the hyperslab just read.
        let mut strides = vec![1; ranges.len()];
        for d in (0..ranges.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * ranges[d + 1].len();
        }
        let level_stride = self.layout.level_dim.map_or(0, |d| strides[d]);
        let (s_lat, s_lon) = (strides[self.layout.lat_dim], strides[self.layout.lon_dim]);
        let (lat0, lon0) = (
            ranges[self.layout.lat_dim].start,
            ranges[self.layout.lon_dim].start,
        );
        let cells = self.lat.file_index.len() * self.lon.file_index.len();
        let offsets: Vec<usize> = match levels.is_empty() {
            true => vec![0],
            false => levels
                .iter()
                .map(|l| (l - level_span.start) * level_stride)
                .collect(),
        };
        for (c, offset) in offsets.into_iter().enumerate() {
            let out_v = &mut values[c * cells..(c + 1) * cells];
            let out_m = &mut valid[c * cells..(c + 1) * cells];
            let cell_values = self.lat.file_index.iter().flat_map(|&fi| {
                let raw = &raw;
                self.lon
                    .file_index
                    .iter()
                    .map(move |&fj| raw[offset + (fi - lat0) * s_lat + (fj - lon0) * s_lon])
            });
            for ((v, m), x) in out_v.iter_mut().zip(out_m.iter_mut()).zip(cell_values) {
                let decoded = self.packing.decode(x);
                *v = decoded.unwrap_or(0.0);
                *m = decoded.is_some();
            }
        }
        Ok(())
    }

    /// The part of dimension `d` that time step `t` needs: the step, the span of the
    /// selected levels, the span of the file's rows and columns the grid takes (a
    /// region, or a patch-parallel rank's band, reads only its part), and the single
    /// index of any other dimension.
    fn range_of(&self, d: usize, t: usize, level_span: &Range<usize>) -> Range<usize> {
        let span = |index: &[usize]| match (index.iter().min(), index.iter().max()) {
            (Some(&lo), Some(&hi)) => lo..hi + 1,
            _ => 0..0,
        };
        if Some(d) == self.layout.time_dim {
            t..t + 1
        } else if Some(d) == self.layout.level_dim {
            level_span.clone()
        } else if d == self.layout.lat_dim {
            span(&self.lat.file_index)
        } else if d == self.layout.lon_dim {
            span(&self.lon.file_index)
        } else {
            0..1
        }
    }
}
