//! One variable of one NetCDF file: where its latitude, longitude, time and level
//! dimensions are, how its raw numbers become physical values and a validity mask,
//! and how to read one time step of it.
//!
//! Only metadata is read when a source is opened; values are read one time step at a
//! time ([`SourceVariable::read_step`]) so a dataset larger than memory can be used.

use std::path::{Path, PathBuf};

use netcdf::{AttributeValue, Extent, Variable};
use serde::Serialize;

use super::grid::{normalize_latitudes, normalize_longitudes, AxisMap, Region};
use super::time::{Calendar, DateTime, TimeAxis, TimeUnits};
use crate::error::InputError;

type Result<T> = std::result::Result<T, InputError>;

/// Options that change how files are read, shared by every source.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub region: Option<Region>,
    /// Vertical levels to select from multi-level variables (coordinate values).
    pub levels: Option<Vec<f64>>,
    /// Overrides a file's time units, e.g. `hours since 1996-01-05 00:00`.
    pub time_units: Option<String>,
}

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

/// A selected vertical level: index in the file and the name suffix of its channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelSelection {
    pub index: usize,
    pub value: f64,
}

/// One variable of one file, described; one *channel* per selected level.
#[derive(Debug, Clone, Serialize)]
pub struct SourceVariable {
    pub path: PathBuf,
    pub var_name: String,
    /// The name it goes by in the dataset (alias or file name).
    pub name: String,
    pub units: Option<String>,
    pub long_name: Option<String>,
    pub dims: Vec<(String, usize)>,
    #[serde(skip)]
    pub lat: AxisMap,
    #[serde(skip)]
    pub lon: AxisMap,
    pub global: bool,
    pub time: TimeAxis,
    /// Where the time axis came from, in words, for the log and `inspect-data`.
    pub time_note: Option<String>,
    pub packing: Packing,
    pub levels: Vec<LevelSelection>,
    #[serde(skip)]
    layout: Layout,
}

/// Positions of the dimensions in the variable's own order.
#[derive(Debug, Clone, Default)]
struct Layout {
    time_dim: usize,
    lat_dim: usize,
    lon_dim: usize,
    level_dim: Option<usize>,
}

impl SourceVariable {
    /// Channel names: the variable's name, or `name<level>` per selected level.
    pub fn channel_names(&self) -> Vec<String> {
        match self.layout.level_dim {
            Some(d) if self.dims[d].1 > 1 => self
                .levels
                .iter()
                .map(|l| format!("{}{}", self.name, format_level(l.value)))
                .collect(),
            _ => vec![self.name.clone()],
        }
    }

    pub fn num_channels(&self) -> usize {
        self.levels.len().max(1)
    }

    pub fn grid_shape(&self) -> (usize, usize) {
        (self.lat.values.len(), self.lon.values.len())
    }

    /// Reads time step `t` of every channel into `values` (`[channel][lat][lon]`, canonical
    /// grid order) and `valid`; missing cells get 0.0 and `false`.
    pub fn read_step(
        &self,
        file: &netcdf::File,
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
            let extents: Vec<Extent> = self
                .dims
                .iter()
                .enumerate()
                .map(|(d, &(_, len))| {
                    if d == self.layout.time_dim {
                        (t..t + 1).into()
                    } else if Some(d) == self.layout.level_dim {
                        let l = level.unwrap_or(0);
                        (l..l + 1).into()
                    } else if d == self.layout.lat_dim || d == self.layout.lon_dim {
                        (0..len).into()
                    } else {
                        (0..1).into()
                    }
                })
                .collect();
            let raw: Vec<f64> = var.get_values::<f64, _>(extents).map_err(|e| {
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

fn format_level(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Stops HDF5 printing its error stack on this thread.
///
/// netcdf-c silences HDF5's automatic error printing only on the thread that initialised
/// it; HDF5 keeps that setting per thread, so a reader thread (the prefetch loader) would
/// print a page of harmless diagnostics per file opened. The symbol is looked up at run
/// time so meshcast does not link a particular libhdf5 by name.
fn silence_hdf5_errors_on_this_thread() {
    thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if DONE.with(|d| d.replace(true)) {
        return;
    }
    type SetAuto = unsafe extern "C" fn(i64, *const std::ffi::c_void, *mut std::ffi::c_void) -> i32;
    // SAFETY: dlsym with a NUL-terminated name; the symbol, if present, has HDF5's
    // `herr_t H5Eset_auto2(hid_t, H5E_auto2_t, void *)` signature (hid_t is 64-bit since HDF5 1.10).
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"H5Eset_auto2".as_ptr());
        if !sym.is_null() {
            let set_auto: SetAuto = std::mem::transmute(sym);
            set_auto(0, std::ptr::null(), std::ptr::null_mut());
        }
    }
}

/// Opens a NetCDF file with an error that names it and says what is wrong.
pub fn open_file(path: &Path) -> Result<netcdf::File> {
    silence_hdf5_errors_on_this_thread();
    if !path.exists() {
        return Err(InputError::file(path, "no such file"));
    }
    if path.is_dir() {
        return Err(InputError::file(path, "is a directory, not a NetCDF file"));
    }
    let format = sniff_format(path);
    let file = netcdf::open(path).map_err(|e| {
        let problem = match format {
            Some(kind) => {
                format!("not a readable NetCDF file ({kind}, possibly truncated or corrupt: {e})")
            }
            None => "not a NetCDF file (no classic CDF or HDF5 signature)".to_string(),
        };
        InputError::file(path, problem)
    })?;
    if format.is_some_and(|f| !f.starts_with("netCDF-4")) {
        check_netcdf3_length(&file, path)?;
    }
    Ok(file)
}

/// libnetcdf opens a truncated netCDF-3 file and reads zeros past its end; refuse a
/// file shorter than the data its header declares (a lower bound: header not counted).
fn check_netcdf3_length(file: &netcdf::File, path: &Path) -> Result<()> {
    let actual = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let (mut fixed, mut per_record, mut records) = (0u64, 0u64, 0u64);
    for v in file.variables() {
        let dims = v.dimensions();
        let size = v.vartype().size() as u64;
        match dims.first() {
            Some(d) if d.is_unlimited() => {
                records = d.len() as u64;
                per_record += size * dims[1..].iter().map(|d| d.len() as u64).product::<u64>();
            }
            _ => fixed += size * dims.iter().map(|d| d.len() as u64).product::<u64>(),
        }
    }
    let needed = fixed + per_record * records;
    if actual < needed {
        return Err(InputError::file(
            path,
            format!("truncated NetCDF file: {actual} bytes, but its header declares at least {needed} bytes of data"),
        ));
    }
    Ok(())
}

/// Names the format a file claims by its first bytes, if it is one NetCDF can be.
fn sniff_format(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    match &head[..n.min(8)] {
        [b'C', b'D', b'F', 1, ..] => Some("classic format"),
        [b'C', b'D', b'F', 2, ..] => Some("64-bit offset format"),
        [b'C', b'D', b'F', 5, ..] => Some("64-bit data format"),
        [0x89, b'H', b'D', b'F', ..] => Some("netCDF-4/HDF5 format"),
        _ => None,
    }
}

/// Names of the variables of a file that lie on a latitude/longitude grid with a time axis.
pub fn gridded_variables(file: &netcdf::File) -> Vec<String> {
    file.variables()
        .filter(|v| {
            let dims: Vec<String> = v.dimensions().iter().map(|d| d.name()).collect();
            let is_coordinate = dims.len() == 1 && dims[0] == v.name();
            !is_coordinate
                && is_numeric(v)
                && dims.iter().any(|d| dim_role(file, d) == DimRole::Lat)
                && dims.iter().any(|d| dim_role(file, d) == DimRole::Lon)
        })
        .map(|v| v.name())
        .collect()
}

fn is_numeric(v: &Variable) -> bool {
    matches!(
        v.vartype(),
        netcdf::types::NcVariableType::Int(_) | netcdf::types::NcVariableType::Float(_)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DimRole {
    Lat,
    Lon,
    Time,
    Level,
    Other,
}

fn attr_string(v: &Variable, name: &str) -> Option<String> {
    match v.attribute_value(name)?.ok()? {
        AttributeValue::Str(s) => Some(s),
        AttributeValue::Strs(s) => Some(s.join(" ")),
        _ => None,
    }
}

fn attr_numbers(v: &Variable, name: &str) -> Option<Vec<f64>> {
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

const LAT_NAMES: &[&str] = &[
    "lat",
    "latitude",
    "lats",
    "nav_lat",
    "xlat",
    "rlat",
    "grid_yt",
    "latitudes",
];
const LON_NAMES: &[&str] = &[
    "lon",
    "longitude",
    "lons",
    "long",
    "nav_lon",
    "xlong",
    "rlon",
    "grid_xt",
    "longitudes",
];
const TIME_NAMES: &[&str] = &[
    "time",
    "timestep",
    "times",
    "t",
    "valid_time",
    "time_counter",
    "date",
    "step_time",
];
const LEVEL_NAMES: &[&str] = &[
    "level",
    "lev",
    "levels",
    "plev",
    "pressure",
    "pressure_level",
    "isobaricinhpa",
    "levelist",
    "height",
    "z",
    "depth",
    "ilev",
    "alt",
    "altitude",
    "sigma",
    "hybrid",
];

fn is_lat_units(u: &str) -> bool {
    matches!(
        u,
        "degrees_north" | "degree_north" | "degree_n" | "degrees_n" | "degreen" | "degreesn"
    )
}

fn is_lon_units(u: &str) -> bool {
    matches!(
        u,
        "degrees_east" | "degree_east" | "degree_e" | "degrees_e" | "degreee" | "degreese"
    )
}

/// What a dimension is, from its coordinate variable's CF attributes, else its name.
fn dim_role(file: &netcdf::File, dim: &str) -> DimRole {
    if let Some(v) = file.variable(dim) {
        let sn = attr_string(&v, "standard_name")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let units = attr_string(&v, "units")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let axis = attr_string(&v, "axis")
            .unwrap_or_default()
            .to_ascii_uppercase();
        let degree_like = units.is_empty() || units.starts_with("degree");
        if sn == "latitude" || is_lat_units(&units) || (axis == "Y" && degree_like) {
            return DimRole::Lat;
        }
        if sn == "longitude" || is_lon_units(&units) || (axis == "X" && degree_like) {
            return DimRole::Lon;
        }
        if sn == "time" || axis == "T" || units.contains(" since ") {
            return DimRole::Time;
        }
        if axis == "Z" || v.attribute("positive").is_some() {
            return DimRole::Level;
        }
    }
    let name = dim.to_ascii_lowercase();
    if LAT_NAMES.contains(&name.as_str()) {
        DimRole::Lat
    } else if LON_NAMES.contains(&name.as_str()) {
        DimRole::Lon
    } else if TIME_NAMES.contains(&name.as_str()) {
        DimRole::Time
    } else if LEVEL_NAMES.contains(&name.as_str()) {
        DimRole::Level
    } else {
        DimRole::Other
    }
}

/// Reads a 1-D coordinate variable as f64, if there is one for `dim`.
fn coordinate_values(file: &netcdf::File, dim: &str) -> Option<Vec<f64>> {
    let v = file.variable(dim)?;
    if v.dimensions().len() != 1 || !is_numeric(&v) {
        return None;
    }
    v.get_values::<f64, _>(..).ok()
}

/// Describes variable `var_name` of the open file at `path`.
pub fn describe_variable(
    file: &netcdf::File,
    path: &Path,
    var_name: &str,
    alias: Option<&str>,
    opts: &ReadOptions,
) -> Result<SourceVariable> {
    let err = |problem: String| InputError::file(path, problem);
    let var = find_numeric_variable(file, var_name).map_err(err)?;
    let dims: Vec<(String, usize)> = var
        .dimensions()
        .iter()
        .map(|d| (d.name(), d.len()))
        .collect();
    let layout = locate_dimensions(file, &var, var_name, &dims).map_err(err)?;
    let levels = select_levels(
        file,
        &dims,
        layout.level_dim,
        opts.levels.as_deref(),
        var_name,
    )
    .map_err(err)?;
    let (lat, lon, global) =
        read_horizontal_axes(file, &dims, &layout, opts.region.as_ref()).map_err(err)?;
    let (time, time_note) =
        decode_time(file, &dims[layout.time_dim].0, opts.time_units.as_deref()).map_err(err)?;
    let packing = read_packing(&var);

    Ok(SourceVariable {
        path: path.to_path_buf(),
        var_name: var_name.to_string(),
        name: alias.unwrap_or(var_name).to_string(),
        units: attr_string(&var, "units"),
        long_name: attr_string(&var, "long_name").or_else(|| attr_string(&var, "standard_name")),
        dims,
        lat,
        lon,
        global,
        time,
        time_note,
        packing,
        levels,
        layout,
    })
}

/// Looks up `var_name` and requires it to hold numbers; when it is missing, the
/// problem lists the file's variables so the user can pick the right name.
fn find_numeric_variable<'f>(
    file: &'f netcdf::File,
    var_name: &str,
) -> std::result::Result<Variable<'f>, String> {
    let Some(var) = file.variable(var_name) else {
        let mut names = gridded_variables(file);
        if names.is_empty() {
            names = file.variables().map(|v| v.name()).collect();
        }
        return Err(format!(
            "no variable '{var_name}' (the file has: {})",
            names.join(", ")
        ));
    };
    if !is_numeric(&var) {
        return Err(format!("variable '{var_name}' is not numeric"));
    }
    Ok(var)
}

/// Finds which of the variable's dimensions are latitude, longitude, time and level,
/// or says why the variable is not a lat/lon/time grid.
fn locate_dimensions(
    file: &netcdf::File,
    var: &Variable,
    var_name: &str,
    dims: &[(String, usize)],
) -> std::result::Result<Layout, String> {
    let roles: Vec<DimRole> = dims.iter().map(|(n, _)| dim_role(file, n)).collect();
    let find = |role: DimRole| roles.iter().position(|&r| r == role);

    let (Some(lat_dim), Some(lon_dim)) = (find(DimRole::Lat), find(DimRole::Lon)) else {
        return Err(explain_missing_grid(file, var, dims));
    };
    if roles.iter().filter(|&&r| r == DimRole::Lat).count() > 1
        || roles.iter().filter(|&&r| r == DimRole::Lon).count() > 1
    {
        return Err(format!(
            "variable '{var_name}' has more than one latitude or longitude dimension"
        ));
    }
    let Some(time_dim) = find(DimRole::Time) else {
        return Err(format!(
            "variable '{var_name}' has no time dimension (dimensions: {})",
            dims.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let level_dim = find_level_dim(dims, &roles, [lat_dim, lon_dim, time_dim], var_name)?;
    Ok(Layout {
        time_dim,
        lat_dim,
        lon_dim,
        level_dim,
    })
}

/// Picks the vertical dimension among those left after `horizontal_and_time`: at
/// most one may be vertical, and any other must have length 1.
fn find_level_dim(
    dims: &[(String, usize)],
    roles: &[DimRole],
    horizontal_and_time: [usize; 3],
    var_name: &str,
) -> std::result::Result<Option<usize>, String> {
    let mut level_dim = None;
    for (d, (name, len)) in dims.iter().enumerate() {
        if horizontal_and_time.contains(&d) {
            continue;
        }
        if roles[d] == DimRole::Level || (level_dim.is_none() && *len > 1) {
            if level_dim.is_some() {
                return Err(format!("variable '{var_name}' has two vertical dimensions"));
            }
            level_dim = Some(d);
        } else if *len != 1 {
            return Err(format!(
                "variable '{var_name}': dimension '{name}' of length {len} is not understood"
            ));
        }
    }
    Ok(level_dim)
}

/// Reads and normalizes the latitude and longitude coordinates (cut to `region`),
/// returning `(lat, lon, global)`, and requires at least a 2 x 2 grid.
fn read_horizontal_axes(
    file: &netcdf::File,
    dims: &[(String, usize)],
    layout: &Layout,
    region: Option<&Region>,
) -> std::result::Result<(AxisMap, AxisMap, bool), String> {
    let lat_name = &dims[layout.lat_dim].0;
    let lon_name = &dims[layout.lon_dim].0;
    let lat_raw = coordinate_values(file, lat_name)
        .ok_or_else(|| format!("no latitude values for dimension '{lat_name}'"))?;
    let lon_raw = coordinate_values(file, lon_name)
        .ok_or_else(|| format!("no longitude values for dimension '{lon_name}'"))?;
    let lat = normalize_latitudes(&lat_raw, region).map_err(|e| format!("'{lat_name}': {e}"))?;
    let (lon, global) =
        normalize_longitudes(&lon_raw, region).map_err(|e| format!("'{lon_name}': {e}"))?;
    if lat.values.len() < 2 || lon.values.len() < 2 {
        return Err(match region {
            Some(r) => format!(
                "the region {},{},{},{} keeps {} x {} cells of the grid; need at least 2 x 2",
                r.lat_min,
                r.lat_max,
                r.lon_min,
                r.lon_max,
                lat.values.len(),
                lon.values.len()
            ),
            None => "the grid has fewer than 2 latitudes or longitudes".to_string(),
        });
    }
    Ok((lat, lon, global))
}

/// Says why a variable has no lat/lon grid: unstructured, curvilinear, or unknown axes.
fn explain_missing_grid(file: &netcdf::File, var: &Variable, dims: &[(String, usize)]) -> String {
    let names: Vec<&str> = dims.iter().map(|(n, _)| n.as_str()).collect();
    // A latitude variable that is a function of one of this variable's dimensions.
    for v in file.variables() {
        let vn = v.name().to_ascii_lowercase();
        let units = attr_string(&v, "units")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let sn = attr_string(&v, "standard_name").unwrap_or_default();
        let is_lat = sn == "latitude"
            || is_lat_units(&units)
            || LAT_NAMES.contains(&vn.as_str())
            || vn == "clat";
        if !is_lat {
            continue;
        }
        let vdims: Vec<String> = v.dimensions().iter().map(|d| d.name()).collect();
        if vdims.len() == 1 && names.contains(&vdims[0].as_str()) && vdims[0] != v.name() {
            return format!(
                "variable '{}' is on an unstructured grid (1-D cell dimension '{}', latitude '{}' is a function of it); \
                 meshcast needs a regular latitude/longitude grid: regrid first (e.g. cdo remapbil)",
                var.name(),
                vdims[0],
                v.name()
            );
        }
        if vdims.len() == 2 && vdims.iter().all(|d| names.contains(&d.as_str())) {
            return format!(
                "variable '{}' is on a curvilinear grid (2-D latitude '{}'); meshcast needs a regular \
                 latitude/longitude grid: regrid first (e.g. cdo remapbil)",
                var.name(),
                v.name()
            );
        }
    }
    format!(
        "variable '{}' has no recognizable latitude/longitude dimensions (dimensions: {}); \
         expected coordinate variables with units degrees_north/degrees_east or names like lat/lon",
        var.name(),
        names.join(", ")
    )
}

fn select_levels(
    file: &netcdf::File,
    dims: &[(String, usize)],
    level_dim: Option<usize>,
    wanted: Option<&[f64]>,
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
        values
            .iter()
            .map(|v| format_level(*v))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(wanted) = wanted else {
        return Err(format!(
            "variable '{var_name}' has {len} levels on '{name}' ({}); choose some with --levels",
            listing()
        ));
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
    wanted
        .iter()
        .map(|&w| {
            // Pressure stored in Pa while the user speaks hPa (or the reverse) still matches.
            let hit = values
                .iter()
                .position(|&v| close(v, w))
                .or_else(|| values.iter().position(|&v| close(v, w * 100.0)))
                .or_else(|| values.iter().position(|&v| close(v * 100.0, w)));
            hit.map(|index| LevelSelection { index, value: w })
                .ok_or_else(|| {
                    format!(
                        "variable '{var_name}' has no level {w} on '{name}' (it has {})",
                        listing()
                    )
                })
        })
        .collect()
}

fn read_packing(var: &Variable) -> Packing {
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
        float_default_fill: matches!(var.vartype(), netcdf::types::NcVariableType::Float(_)),
    }
}

/// Decodes the time axis of dimension `dim`, CF or not; the note says how, if not CF.
fn decode_time(
    file: &netcdf::File,
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
        Some(v) if v.dimensions().len() == 1 && is_numeric(v) => v
            .get_values::<f64, _>(..)
            .map_err(|e| format!("cannot read time variable '{dim}': {e}"))?,
        _ => (0..len).map(|i| i as f64).collect(),
    };
    let cf_units = var
        .as_ref()
        .and_then(|v| attr_string(v, "units"))
        .filter(|u| u.contains(" since "));
    let (units, note) = match (override_units, cf_units) {
        (Some(o), _) => (
            TimeUnits::parse(o, calendar).map_err(|e| format!("--time-units: {e}"))?,
            Some(format!("time axis '{dim}' read with --time-units '{o}'")),
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
            let units = TimeUnits {
                seconds_per_unit: 3600.0,
                reference: reference.to_instant(calendar),
            };
            let note = format!(
                "time axis '{dim}' is not CF: read as hours since {reference} from '{ref_name}' \
                 (override with --time-units)"
            );
            (units, Some(note))
        }
    };
    let instants: Vec<_> = values.iter().map(|&v| units.instant(v)).collect();
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
fn reference_time_text(
    file: &netcdf::File,
    time_var: Option<&Variable>,
) -> Option<(String, String)> {
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
            if matches!(v.vartype(), netcdf::types::NcVariableType::Char) {
                let bytes: Vec<u8> = v.get_raw_values(..).ok()?;
                let text = String::from_utf8_lossy(&bytes)
                    .trim_matches(char::from(0))
                    .trim()
                    .to_string();
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
