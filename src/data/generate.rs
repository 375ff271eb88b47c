//! Synthetic but physically meaningful data: the Rossby-Haurwitz wave of
//! Williamson et al. (1992), test case 6.
//!
//! The wave is an exact solution of the non-divergent barotropic vorticity equation on
//! the sphere: its pattern travels eastward without changing shape at the angular
//! speed `nu = (R(3+R)w - 2 Omega) / ((1+R)(2+R))` (about 3 degrees per 6 h for R = 4).
//! Wind and height follow the test case; temperature and sea-level pressure are tied
//! to the height anomaly (an equivalent-barotropic atmosphere) and temperature carries
//! a diurnal cycle, so a model must learn both advection and the daily heating.

use std::f64::consts::PI;
use std::path::Path;

use anyhow::Context;
use netcdf::Extent;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::grid::Region;
use super::time::{Calendar, DateTime};
use crate::error::InputError;

const EARTH_RADIUS: f64 = 6.371_22e6;
const OMEGA: f64 = 7.292e-5;
const GRAVITY: f64 = 9.806_16;
/// Fill value written where `fill_corners` masks cells (as in many regional files).
pub const FILL_VALUE: f32 = -9999.0;
/// Fill value of packed (int16) variables.
const PACKED_FILL: i16 = -32767;

/// On-disk format of the generated file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NcFormat {
    /// netCDF-3 classic.
    Classic,
    /// netCDF-3 64-bit offset.
    Offset64,
    /// netCDF-4 (HDF5), chunked per time step.
    Netcdf4,
}

impl NcFormat {
    /// The spellings of flags, configs and JSON, in declaration order.
    pub const NAMES: &'static [&'static str] = &["classic", "offset64", "netcdf4"];
}

impl std::fmt::Display for NcFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(NcFormat::NAMES[*self as usize])
    }
}

impl std::str::FromStr for NcFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "classic" => Ok(NcFormat::Classic),
            "offset64" => Ok(NcFormat::Offset64),
            "netcdf4" => Ok(NcFormat::Netcdf4),
            other => Err(format!(
                "unknown format '{other}' (expected classic, offset64 or netcdf4)"
            )),
        }
    }
}

/// What to generate. Serialisable so configs can embed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateOptions {
    /// Grid spacing in degrees (5, 2.5, 1, 0.25, ...).
    pub resolution: f64,
    /// Regional box instead of the globe.
    #[serde(with = "super::spec::region_string")]
    pub region: Option<Region>,
    pub steps: usize,
    pub step_hours: f64,
    /// First time, `YYYY-MM-DD hh:mm`.
    pub start: String,
    pub seed: u64,
    /// Fraction of cells (0..0.5) masked as _FillValue in the four corners.
    pub fill_corners: f64,
    pub format: NcFormat,
    /// Deflate level 1..9 for netCDF-4 (0: none).
    pub deflate: i32,
    /// Store int16 with scale_factor/add_offset (as ERA5 downloads do).
    pub pack: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            resolution: 5.0,
            region: None,
            steps: 120,
            step_hours: 6.0,
            start: "2000-01-01 00:00".into(),
            seed: 0,
            fill_corners: 0.0,
            format: NcFormat::Netcdf4,
            deflate: 0,
            pack: false,
        }
    }
}

/// The wave's parameters; `seed` moves its phase and amplitude.
#[derive(Debug, Clone, Copy)]
pub struct RossbyHaurwitz {
    /// Zonal wavenumber R.
    pub wavenumber: f64,
    /// Angular velocity of the solid-body part (omega) and wave amplitude (K), 1/s.
    pub omega: f64,
    pub k: f64,
    pub h0: f64,
    /// Longitude of the wave's phase at t = 0, radians.
    pub phase: f64,
}

impl RossbyHaurwitz {
    pub fn seeded(seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let r = 4.0;
        RossbyHaurwitz {
            wavenumber: r,
            omega: 7.848e-6,
            k: 7.848e-6 * rng.random_range(0.8..1.2),
            h0: 8000.0,
            phase: rng.random_range(0.0..2.0 * PI / r),
        }
    }

    /// Eastward angular speed of the pattern, rad/s.
    pub fn angular_speed(&self) -> f64 {
        let (r, w) = (self.wavenumber, self.omega);
        (r * (3.0 + r) * w - 2.0 * OMEGA) / ((1.0 + r) * (2.0 + r))
    }

    /// `(u, v, h)` at latitude `phi`, longitude `lambda` (radians), time `t` (s).
    pub fn fields(&self, phi: f64, lambda: f64, t: f64) -> (f64, f64, f64) {
        let (r, w, k, a) = (self.wavenumber, self.omega, self.k, EARTH_RADIUS);
        let lam = r * (lambda - self.angular_speed() * t - self.phase);
        let (s, c) = phi.sin_cos();
        let c = c.max(0.0);
        let cr = c.powf(r);
        let u = a * w * c + a * k * c.powf(r - 1.0) * (r * s * s - c * c) * lam.cos();
        let v = -a * k * r * c.powf(r - 1.0) * s * lam.sin();
        let big_a = 0.5 * w * (2.0 * OMEGA + w) * c * c
            + 0.25
                * k
                * k
                * c.powf(2.0 * r - 2.0)
                * ((r + 1.0) * c.powi(4) + (2.0 * r * r - r - 2.0) * c * c - 2.0 * r * r);
        let big_b = 2.0 * (OMEGA + w) * k / ((r + 1.0) * (r + 2.0))
            * cr
            * ((r * r + 2.0 * r + 2.0) - (r + 1.0).powi(2) * c * c);
        let big_c = 0.25 * k * k * cr * cr * ((r + 1.0) * c * c - (r + 2.0));
        let h = self.h0 + a * a / GRAVITY * (big_a + big_b * lam.cos() + big_c * (2.0 * lam).cos());
        (u, v, h)
    }

    /// Zonal-mean height at `phi` (the wave-free part), for anomalies.
    fn zonal_mean_height(&self, phi: f64) -> f64 {
        let (r, w, k, a) = (self.wavenumber, self.omega, self.k, EARTH_RADIUS);
        let c = phi.cos().max(0.0);
        let big_a = 0.5 * w * (2.0 * OMEGA + w) * c * c
            + 0.25
                * k
                * k
                * c.powf(2.0 * r - 2.0)
                * ((r + 1.0) * c.powi(4) + (2.0 * r * r - r - 2.0) * c * c - 2.0 * r * r);
        self.h0 + a * a / GRAVITY * big_a
    }
}

/// One generated variable: name, CF attributes and how to compute it.
struct VarDef {
    name: &'static str,
    standard_name: &'static str,
    long_name: &'static str,
    units: &'static str,
    /// Physical range, for int16 packing.
    range: (f64, f64),
}

const VARIABLES: [VarDef; 5] = [
    VarDef {
        name: "z",
        standard_name: "geopotential_height",
        long_name: "geopotential height (barotropic layer)",
        units: "m",
        range: (7000.0, 11000.0),
    },
    VarDef {
        name: "u",
        standard_name: "eastward_wind",
        long_name: "eastward wind",
        units: "m s-1",
        range: (-150.0, 150.0),
    },
    VarDef {
        name: "v",
        standard_name: "northward_wind",
        long_name: "northward wind",
        units: "m s-1",
        range: (-150.0, 150.0),
    },
    VarDef {
        name: "t2m",
        standard_name: "air_temperature",
        long_name: "near-surface air temperature",
        units: "K",
        range: (180.0, 340.0),
    },
    VarDef {
        name: "msl",
        standard_name: "air_pressure_at_mean_sea_level",
        long_name: "mean sea-level pressure",
        units: "Pa",
        range: (90000.0, 110000.0),
    },
];

/// Names of the variables [`generate`] writes.
pub fn variable_names() -> Vec<&'static str> {
    VARIABLES.iter().map(|v| v.name).collect()
}

/// Latitudes (descending, ERA5 style) and longitudes (0..360 for global grids).
fn axes(opts: &GenerateOptions) -> (Vec<f64>, Vec<f64>) {
    let d = opts.resolution;
    match opts.region {
        None => {
            let nlat = (180.0 / d).round() as usize;
            let nlon = (360.0 / d).round() as usize;
            (
                (0..nlat).map(|i| 90.0 - (i as f64 + 0.5) * d).collect(),
                (0..nlon).map(|j| (j as f64 + 0.5) * d).collect(),
            )
        }
        Some(r) => {
            let width = (r.lon_max - r.lon_min).rem_euclid(360.0);
            let nlat = ((r.lat_max - r.lat_min) / d).floor() as usize + 1;
            let nlon = (width / d).floor() as usize + 1;
            (
                (0..nlat).map(|i| r.lat_max - i as f64 * d).collect(),
                (0..nlon).map(|j| r.lon_min + j as f64 * d).collect(),
            )
        }
    }
}

/// True where the corner mask hides a cell (four triangles covering `fraction` of the grid).
fn in_corner(i: usize, j: usize, nlat: usize, nlon: usize, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let c = (fraction / 2.0).sqrt();
    let y = i as f64 / (nlat - 1).max(1) as f64;
    let x = j as f64 / (nlon - 1).max(1) as f64;
    [x + y, 1.0 - x + y, x + 1.0 - y, 2.0 - x - y]
        .iter()
        .any(|&d| d < c)
}

fn validate(opts: &GenerateOptions) -> anyhow::Result<()> {
    if !(opts.resolution > 0.0 && opts.resolution <= 30.0) {
        crate::bail_input!(
            "--resolution {} must be in (0, 30] degrees",
            opts.resolution
        );
    }
    if opts.steps == 0 || opts.step_hours <= 0.0 {
        crate::bail_input!("--steps and --step-hours must be positive");
    }
    if !(0.0..0.5).contains(&opts.fill_corners) {
        crate::bail_input!("--fill-corners {} must be in [0, 0.5)", opts.fill_corners);
    }
    if !(0..=9).contains(&opts.deflate) || (opts.deflate > 0 && opts.format != NcFormat::Netcdf4) {
        crate::bail_input!("--deflate needs --format netcdf4 and a level 0..9");
    }
    Ok(())
}

/// Writes the dataset to `path` (through a temporary file renamed at the end, so an
/// interrupted run leaves no half-written file). Returns the number of bytes written.
pub fn generate(path: &Path, opts: &GenerateOptions, history: &str) -> anyhow::Result<u64> {
    validate(opts)?;
    super::grid::check_grid_size(
        (180.0 / opts.resolution) as usize + 1,
        (360.0 / opts.resolution) as usize + 1,
    )
    .map_err(|e| InputError(format!("--resolution {}: {}", opts.resolution, e.0)))?;
    let cal = Calendar::ProlepticGregorian;
    let start =
        DateTime::parse(&opts.start, cal).map_err(|e| InputError(format!("--start: {e}")))?;
    let (lat, lon) = axes(opts);
    let (nlat, nlon) = (lat.len(), lon.len());
    if nlat < 2 || nlon < 2 {
        crate::bail_input!("the grid would have {nlat} x {nlon} cells; need at least 2 x 2");
    }
    let wave = RossbyHaurwitz::seeded(opts.seed);
    let tmp = crate::util::temp_path(path);
    let contents = FileContents {
        opts,
        lat: &lat,
        lon: &lon,
        wave: &wave,
        start,
    };
    let result = write_file(&tmp, &contents, history);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| {
        format!(
            "{}: cannot move the finished file into place",
            path.display()
        )
    })?;
    Ok(std::fs::metadata(path)?.len())
}

/// Everything [`write_file`] puts in the file, grouped so the writing helpers share
/// one argument.
struct FileContents<'a> {
    opts: &'a GenerateOptions,
    lat: &'a [f64],
    lon: &'a [f64],
    wave: &'a RossbyHaurwitz,
    start: DateTime,
}

/// Creates the file at `path` and writes its header, coordinates and every time step.
fn write_file(path: &Path, contents: &FileContents, history: &str) -> anyhow::Result<()> {
    let mode = match contents.opts.format {
        NcFormat::Classic => netcdf::Options::CLASSIC,
        NcFormat::Offset64 => netcdf::Options::_64BIT_OFFSET,
        NcFormat::Netcdf4 => netcdf::Options::NETCDF4,
    };
    let mut file =
        netcdf::create_with(path, mode).with_context(|| cannot_write(path, "the file"))?;
    define_global_attributes(&mut file, contents, history)?;
    define_coordinates(&mut file, contents)?;
    for def in &VARIABLES {
        define_field(&mut file, def, contents)?;
    }

    // Classic files must leave define mode before any data is written.
    file.enddef()
        .with_context(|| cannot_write(path, "the header"))?;
    file.variable_mut("lat")
        .expect("defined above")
        .put_values(contents.lat, ..)
        .with_context(|| cannot_write(path, "lat"))?;
    file.variable_mut("lon")
        .expect("defined above")
        .put_values(contents.lon, ..)
        .with_context(|| cannot_write(path, "lon"))?;
    write_steps(&mut file, path, contents)?;
    file.close()
        .with_context(|| cannot_write(path, "the file"))?;
    Ok(())
}

/// The context of every write error: which file, and which part of it failed.
fn cannot_write(path: &Path, what: &str) -> String {
    format!("{}: cannot write {what}", path.display())
}

/// Writes the CF global attributes, recording how the file was made (wave
/// parameters and seed) so it can be reproduced.
fn define_global_attributes(
    file: &mut netcdf::FileMut,
    contents: &FileContents,
    history: &str,
) -> anyhow::Result<()> {
    let wave = contents.wave;
    file.add_attribute("Conventions", "CF-1.8")?;
    file.add_attribute("title", "Synthetic Rossby-Haurwitz wave dataset")?;
    file.add_attribute(
        "source",
        format!(
            "meshcast {} generate-data: Rossby-Haurwitz wave (Williamson et al. 1992, case 6), R={}, K={:.4e}, phase={:.4}, seed={}",
            env!("CARGO_PKG_VERSION"),
            wave.wavenumber,
            wave.k,
            wave.phase,
            contents.opts.seed
        ),
    )?;
    file.add_attribute("history", history)?;
    Ok(())
}

/// Defines the time, lat and lon dimensions and their CF coordinate variables.
fn define_coordinates(file: &mut netcdf::FileMut, contents: &FileContents) -> anyhow::Result<()> {
    file.add_unlimited_dimension("time")?;
    file.add_dimension("lat", contents.lat.len())?;
    file.add_dimension("lon", contents.lon.len())?;

    let mut v = file.add_variable::<f64>("time", &["time"])?;
    v.put_attribute("standard_name", "time")?;
    v.put_attribute("units", format!("hours since {}:00", contents.start))?;
    v.put_attribute("calendar", "standard")?;
    v.put_attribute("axis", "T")?;
    let mut v = file.add_variable::<f64>("lat", &["lat"])?;
    v.put_attribute("standard_name", "latitude")?;
    v.put_attribute("units", "degrees_north")?;
    v.put_attribute("axis", "Y")?;
    let mut v = file.add_variable::<f64>("lon", &["lon"])?;
    v.put_attribute("standard_name", "longitude")?;
    v.put_attribute("units", "degrees_east")?;
    v.put_attribute("axis", "X")?;
    Ok(())
}

/// Defines one generated variable: int16 with packing attributes or float32, its CF
/// attributes, and per-step chunking and compression for netCDF-4.
fn define_field(
    file: &mut netcdf::FileMut,
    def: &VarDef,
    contents: &FileContents,
) -> anyhow::Result<()> {
    let opts = contents.opts;
    let mut v = if opts.pack {
        let mut v = file.add_variable::<i16>(def.name, &["time", "lat", "lon"])?;
        let (scale, offset) = packing(def.range);
        v.put_attribute("scale_factor", scale)?;
        v.put_attribute("add_offset", offset)?;
        v.put_attribute("_FillValue", PACKED_FILL)?;
        v.put_attribute("missing_value", PACKED_FILL)?;
        v
    } else {
        let mut v = file.add_variable::<f32>(def.name, &["time", "lat", "lon"])?;
        v.put_attribute("_FillValue", FILL_VALUE)?;
        v
    };
    v.put_attribute("standard_name", def.standard_name)?;
    v.put_attribute("long_name", def.long_name)?;
    v.put_attribute("units", def.units)?;
    if opts.format == NcFormat::Netcdf4 {
        v.set_chunking(&[1, contents.lat.len(), contents.lon.len()])?;
        if opts.deflate > 0 {
            v.set_compression(opts.deflate, true)?;
        }
    }
    Ok(())
}

/// Computes and writes every time step, one step at a time so memory stays bounded
/// by one step of the grid.
fn write_steps(
    file: &mut netcdf::FileMut,
    path: &Path,
    contents: &FileContents,
) -> anyhow::Result<()> {
    let opts = contents.opts;
    let (nlat, nlon) = (contents.lat.len(), contents.lon.len());
    let mask: Vec<bool> = (0..nlat * nlon)
        .map(|k| in_corner(k / nlon, k % nlon, nlat, nlon, opts.fill_corners))
        .collect();
    let start_hour = f64::from(contents.start.hour) + f64::from(contents.start.minute) / 60.0;
    for step in 0..opts.steps {
        let hours = step as f64 * opts.step_hours;
        let fields = compute_step(contents.wave, contents.lat, contents.lon, hours, start_hour);
        file.variable_mut("time")
            .expect("defined above")
            .put_values(&[hours], step..step + 1)
            .with_context(|| cannot_write(path, "time"))?;
        for (def, values) in VARIABLES.iter().zip(&fields) {
            let mut var = file.variable_mut(def.name).expect("defined above");
            let extent = [Extent::from(step..step + 1), (..).into(), (..).into()];
            let written = if opts.pack {
                var.put_values(&packed_values(values, &mask, def.range), extent)
            } else {
                var.put_values(&float_values(values, &mask), extent)
            };
            written.with_context(|| cannot_write(path, def.name))?;
        }
    }
    Ok(())
}

/// Stores `values` as int16 with the packing of `range`, with the packed fill value
/// where `mask` hides a cell.
fn packed_values(values: &[f64], mask: &[bool], range: (f64, f64)) -> Vec<i16> {
    let (scale, offset) = packing(range);
    values
        .iter()
        .zip(mask)
        .map(|(&x, &m)| {
            if m {
                PACKED_FILL
            } else {
                ((x - offset) / scale).round().clamp(-32766.0, 32767.0) as i16
            }
        })
        .collect()
}

/// Stores `values` as float32, with [`FILL_VALUE`] where `mask` hides a cell.
fn float_values(values: &[f64], mask: &[bool]) -> Vec<f32> {
    values
        .iter()
        .zip(mask)
        .map(|(&x, &m)| if m { FILL_VALUE } else { x as f32 })
        .collect()
}

/// `(scale_factor, add_offset)` mapping `range` onto int16.
fn packing(range: (f64, f64)) -> (f64, f64) {
    ((range.1 - range.0) / 65000.0, 0.5 * (range.0 + range.1))
}

/// The five fields at `hours` after the start, `[var][lat][lon]` in file order.
fn compute_step(
    wave: &RossbyHaurwitz,
    lat: &[f64],
    lon: &[f64],
    hours: f64,
    start_hour: f64,
) -> [Vec<f64>; 5] {
    let n = lat.len() * lon.len();
    let mut out: [Vec<f64>; 5] = std::array::from_fn(|_| Vec::with_capacity(n));
    let t = hours * 3600.0;
    for &la in lat {
        let phi = la.to_radians();
        let h_mean = wave.zonal_mean_height(phi);
        for &lo in lon {
            let lambda = lo.to_radians();
            let (u, v, h) = wave.fields(phi, lambda, t);
            let anomaly = h - h_mean;
            // Local solar hour; warmest at 15h, amplitude largest at the equator.
            let solar = (start_hour + hours + lo / 15.0).rem_euclid(24.0);
            let diurnal = 4.0 * phi.cos() * (2.0 * PI * (solar - 15.0) / 24.0).cos();
            let t2m = 288.0 - 45.0 * phi.sin().powi(2) + 0.01 * anomaly + diurnal;
            let msl = 101_325.0 + 1.2 * GRAVITY * 0.3 * anomaly;
            for (slot, x) in out.iter_mut().zip([h, u, v, t2m, msl]) {
                slot.push(x);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_speed_matches_williamson() {
        // Williamson et al. (1992): nu for R=4, omega=K=7.848e-6 is about 2.46e-6 rad/s (eastward).
        let w = RossbyHaurwitz {
            wavenumber: 4.0,
            omega: 7.848e-6,
            k: 7.848e-6,
            h0: 8000.0,
            phase: 0.0,
        };
        assert!(
            (w.angular_speed() - 2.4635e-6).abs() < 1e-9,
            "{}",
            w.angular_speed()
        );
    }

    #[test]
    fn height_is_in_the_test_case_range() {
        let w = RossbyHaurwitz {
            wavenumber: 4.0,
            omega: 7.848e-6,
            k: 7.848e-6,
            h0: 8000.0,
            phase: 0.0,
        };
        let mut lo = f64::MAX;
        let mut hi = f64::MIN;
        for i in 0..90 {
            for j in 0..180 {
                let (_, _, h) = w.fields(
                    (-89.0 + 2.0 * i as f64).to_radians(),
                    (2.0 * j as f64).to_radians(),
                    0.0,
                );
                lo = lo.min(h);
                hi = hi.max(h);
            }
        }
        // Test case 6 heights span roughly 8,100..10,600 m.
        assert!(
            lo > 7800.0 && hi < 10_800.0 && hi - lo > 2000.0,
            "{lo}..{hi}"
        );
    }

    #[test]
    fn corner_mask_covers_about_the_fraction() {
        let (nlat, nlon) = (33, 36);
        let masked = (0..nlat * nlon)
            .filter(|&k| in_corner(k / nlon, k % nlon, nlat, nlon, 0.2))
            .count();
        let frac = masked as f64 / (nlat * nlon) as f64;
        assert!((frac - 0.2).abs() < 0.04, "{frac}");
    }
}
