//! Several files merged on one grid and one time axis.
//!
//! A [`Dataset`] holds only metadata; [`StepReader`] reads one time step of every
//! channel on demand, keeping its own open file handles (one reader per thread).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::grid::Grid;
use super::source::{
    describe_variable, gridded_variables, open_file, static_fields, SourceVariable, Store,
};
use super::spec::DataSpec;
use super::statics::StaticFields;
use super::time::{format_step, Instant, TimeAxis};
use crate::error::InputError;

/// One input channel of the model: one variable at one level.
#[derive(Debug, Clone, Serialize)]
pub struct Channel {
    pub name: String,
    pub units: Option<String>,
    pub long_name: Option<String>,
    pub standard_name: Option<String>,
    /// Sources (in time order) that hold this channel, and which of their channels it is.
    #[serde(skip)]
    parts: Vec<ChannelPart>,
}

impl Channel {
    /// The source that first holds this channel (the one whose metadata the channel
    /// took) and the position of the channel's level among that source's levels.
    pub fn origin(&self) -> (usize, usize) {
        (self.parts[0].source, self.parts[0].level)
    }
}

#[derive(Debug, Clone)]
struct ChannelPart {
    source: usize,
    level: usize,
    /// Index on the merged time axis of the source's first step.
    time_offset: usize,
}

/// Metadata of the merged data: grid, time axis, channels and where each is stored.
#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub grid: Grid,
    pub time: TimeAxis,
    pub channels: Vec<Channel>,
    pub sources: Vec<SourceVariable>,
    /// Static fields given to the model beside the states (`--static`).
    #[serde(skip)]
    pub statics: StaticFields,
    /// Hash of what was loaded (files, sizes, modification times, picks, region).
    pub fingerprint: String,
}

/// One time step of every channel, on the canonical grid: `[channel][lat][lon]`.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub values: Vec<f32>,
    pub valid: Vec<bool>,
}

impl Dataset {
    /// Reads the metadata of every file in `spec` and merges them.
    pub fn open(spec: &DataSpec) -> anyhow::Result<Dataset> {
        if spec.is_empty() {
            crate::bail_input!("no data given: pass NetCDF files, --var FILE:NAME[=ALIAS], or a config with a [data] section");
        }
        let opts = spec.read_options();
        let mut sources = Vec::new();
        for path in &spec.files {
            let file = open_file(path)?;
            let fixed = static_fields(&file);
            let names: Vec<String> = gridded_variables(&file)
                .into_iter()
                .filter(|n| !fixed.contains(n))
                .collect();
            if names.is_empty() && !fixed.is_empty() {
                let problem = format!(
                    "only static fields, without a time dimension ({}): nothing to forecast",
                    fixed.join(", ")
                );
                return Err(InputError::file(path, problem).into());
            }
            if names.is_empty() {
                return Err(InputError::file(path, explain_no_gridded(&file)).into());
            }
            if !fixed.is_empty() {
                tracing::info!(
                    "{}: static fields left out (no time dimension): {}",
                    path.display(),
                    fixed.join(", ")
                );
            }
            for name in names {
                sources.push(describe_variable(&file, path, &name, None, &opts)?);
            }
        }
        for pick in &spec.vars {
            let file = open_file(&pick.path)?;
            sources.push(describe_variable(
                &file,
                &pick.path,
                &pick.name,
                pick.alias.as_deref(),
                &opts,
            )?);
        }
        if let Some(levels) = &spec.levels {
            if sources.iter().all(|s| s.levels.len() <= 1) {
                crate::bail_input!(
                    "--levels {levels}: no variable of {} has several vertical levels to choose from",
                    spec.files
                        .iter()
                        .chain(spec.vars.iter().map(|v| &v.path))
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let notes: std::collections::BTreeSet<&str> = sources
            .iter()
            .filter_map(|s| s.time_note.as_deref())
            .collect();
        for note in notes {
            tracing::info!("{note}");
        }
        let static_sources = super::statics::describe(&spec.statics, &opts)?;
        let fingerprint = fingerprint(spec, &[&sources[..], &static_sources[..]].concat());
        let mut dataset = merge(sources, fingerprint)?;
        dataset.statics =
            super::statics::load(&static_sources, &dataset.grid, &dataset.sources[0])?;
        Ok(dataset)
    }

    pub fn num_channels(&self) -> usize {
        self.channels.len()
    }

    /// The same data on latitude rows `rows` of the grid only (all longitudes): its
    /// batches read and hold that band's cells, numbered from the band's first row. A
    /// patch-parallel rank reads only the band its patches need.
    pub fn latitude_band(&self, rows: std::ops::Range<usize>) -> Dataset {
        let width = self.statics.width();
        let cells = rows.start * self.grid.nlon()..rows.end * self.grid.nlon();
        Dataset {
            grid: Grid {
                lat: self.grid.lat[rows.clone()].to_vec(),
                ..self.grid.clone()
            },
            sources: (self.sources.iter())
                .map(|s| s.latitude_band(rows.clone()))
                .collect(),
            statics: StaticFields {
                names: self.statics.names.clone(),
                features: self.statics.features[cells.start * width..cells.end * width].to_vec(),
            },
            time: self.time.clone(),
            channels: self.channels.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// Cells valid in at least one time step of `steps` for at least one channel: the
    /// grid nodes the graph keeps (a cell masked in every sample is left out).
    pub fn ever_valid(&self, steps: std::ops::Range<usize>) -> anyhow::Result<Vec<bool>> {
        let cells = self.grid.len();
        let mut valid = vec![false; cells];
        let mut reader = StepReader::default();
        let bar = crate::util::progress_bar(true, steps.len(), "valid cells: time steps");
        for t in steps {
            bar.inc(1);
            let state = reader.read(self, t)?;
            for (c, flag) in state.valid.iter().enumerate() {
                valid[c % cells] |= *flag;
            }
        }
        Ok(valid)
    }

    /// The files behind the data, for error messages: `a.nc, b.nc`.
    pub fn file_list(&self) -> String {
        self.files().join(", ")
    }

    /// The files behind the data, each once, in the order given.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for s in &self.sources {
            let name = s.path.display().to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    pub fn channel_names(&self) -> Vec<String> {
        self.channels.iter().map(|c| c.name.clone()).collect()
    }

    /// One line for logs: `6 variables on 33 x 36 regional grid, 64 steps every 6 h from ...`.
    pub fn summary_line(&self) -> String {
        format!(
            "{} channels ({}) on a {} x {} {} grid, {} steps every {} from {}",
            self.channels.len(),
            self.channel_names().join(", "),
            self.grid.nlat(),
            self.grid.nlon(),
            if self.grid.global {
                "global"
            } else {
                "regional"
            },
            self.time.len(),
            self.time
                .step_seconds()
                .map(format_step)
                .unwrap_or_else(|| "-".into()),
            self.time.datetime(0)
        )
    }
}

fn explain_no_gridded(file: &Store) -> String {
    // Let describe_variable say why the first multi-dimensional variable is not usable.
    let candidate = file
        .variables()
        .iter()
        .find(|v| v.dims().len() >= 2)
        .map(|v| v.name());
    match candidate {
        Some(name) => {
            match describe_variable(file, Path::new(""), &name, None, &Default::default()) {
                Err(e) => e.0.trim_start_matches(": ").to_string(),
                Ok(_) => "no gridded variables".to_string(),
            }
        }
        None => "no gridded variables (nothing with latitude, longitude and time dimensions)"
            .to_string(),
    }
}

fn fingerprint(spec: &DataSpec, sources: &[SourceVariable]) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(spec).unwrap_or_default());
    let mut paths: Vec<&PathBuf> = sources.iter().map(|s| &s.path).collect();
    paths.dedup();
    for p in paths {
        h.update(p.to_string_lossy().as_bytes());
        if let Ok(meta) = std::fs::metadata(p) {
            h.update(meta.len().to_le_bytes());
            if let Ok(m) = meta.modified().and_then(|m| {
                m.duration_since(std::time::UNIX_EPOCH)
                    .map_err(std::io::Error::other)
            }) {
                h.update(m.as_nanos().to_le_bytes());
            }
        }
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

fn describe_axis(s: &SourceVariable) -> String {
    let t = &s.time;
    format!(
        "{} steps from {} every {}",
        t.len(),
        t.datetime(0),
        t.step_seconds()
            .map(format_step)
            .unwrap_or_else(|| "-".into())
    )
}

/// Checks every source against the first grid, concatenates same-named sources along
/// time, and requires one common time axis.
fn merge(sources: Vec<SourceVariable>, fingerprint: String) -> anyhow::Result<Dataset> {
    let first = sources
        .first()
        .ok_or_else(|| InputError("no variables found".into()))?;
    super::grid::check_grid_size(first.lat.values.len(), first.lon.values.len())
        .map_err(|e| InputError::file(&first.path, e.0))?;
    let grid = Grid {
        lat: first.lat.values.clone(),
        lon: first.lon.values.clone(),
        global: first.global,
    };
    for s in &sources[1..] {
        check_same_grid(first, s, &grid)?;
        check_same_calendar(first, s)?;
    }
    let mut groups = group_by_name(&sources);
    let mut group_axes = Vec::new();
    for (name, members) in &mut groups {
        group_axes.push(concatenate_group(&sources, name, members)?);
    }
    let time = common_time_axis(&sources, &groups, &group_axes)?;
    let channels = group_channels(&sources, &groups)?;
    Ok(Dataset {
        statics: StaticFields::default(),
        grid,
        time,
        channels,
        sources,
        fingerprint,
    })
}

/// Sources with the same name, as indices into the source list; each group is one time series.
type SourceGroup = (String, Vec<usize>);

/// Rejects a source whose latitudes or longitudes differ from the dataset's grid,
/// naming both files and both extents so the mismatch is easy to find.
pub(super) fn check_same_grid(
    first: &SourceVariable,
    s: &SourceVariable,
    grid: &Grid,
) -> anyhow::Result<()> {
    let same = |a: &[f64], b: &[f64]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
    };
    if !same(&s.lat.values, &grid.lat) || !same(&s.lon.values, &grid.lon) {
        return Err(InputError(format!(
            "{} and {}: grids do not match ({} x {} vs {} x {}, lat {:.3}..{:.3} vs {:.3}..{:.3}, lon {:.3}..{:.3} vs {:.3}..{:.3})",
            first.path.display(),
            s.path.display(),
            grid.nlat(),
            grid.nlon(),
            s.lat.values.len(),
            s.lon.values.len(),
            grid.lat[0],
            grid.lat[grid.nlat() - 1],
            s.lat.values[0],
            s.lat.values[s.lat.values.len() - 1],
            grid.lon[0],
            grid.lon[grid.nlon() - 1],
            s.lon.values[0],
            s.lon.values[s.lon.values.len() - 1],
        ))
        .into());
    }
    Ok(())
}

/// Rejects a source whose time axis uses another calendar than the first source's,
/// since instants from different calendars cannot be compared.
fn check_same_calendar(first: &SourceVariable, s: &SourceVariable) -> anyhow::Result<()> {
    if s.time.calendar != first.time.calendar {
        return Err(InputError(format!(
            "{} and {}: time axes use different calendars ({:?} vs {:?})",
            first.path.display(),
            s.path.display(),
            first.time.calendar,
            s.time.calendar
        ))
        .into());
    }
    Ok(())
}

/// Groups sources by name, in order of first appearance, so that files holding
/// consecutive stretches of one variable become one series.
fn group_by_name(sources: &[SourceVariable]) -> Vec<SourceGroup> {
    let mut groups: Vec<SourceGroup> = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        match groups.iter_mut().find(|(n, _)| *n == s.name) {
            Some((_, members)) => members.push(i),
            None => groups.push((s.name.clone(), vec![i])),
        }
    }
    groups
}

/// Sorts one group's members by start time and returns their joined time axis,
/// rejecting members that overlap in time or disagree on levels.
fn concatenate_group(
    sources: &[SourceVariable],
    name: &str,
    members: &mut [usize],
) -> anyhow::Result<Vec<Instant>> {
    members.sort_by_key(|&i| sources[i].time.instants[0]);
    for w in members.windows(2) {
        let (a, b) = (&sources[w[0]], &sources[w[1]]);
        if b.time.instants[0] <= *a.time.instants.last().expect("non-empty") {
            return Err(InputError(format!(
                "variable '{name}' comes from both {} ('{}') and {} ('{}') over the same times; \
                 rename one, e.g. --var {}:{}={}2",
                a.path.display(),
                a.var_name,
                b.path.display(),
                b.var_name,
                b.path.display(),
                b.var_name,
                name
            ))
            .into());
        }
        if a.channel_names() != b.channel_names() {
            return Err(InputError(format!(
                "variable '{name}' has different levels in {} and {}",
                a.path.display(),
                b.path.display()
            ))
            .into());
        }
    }
    Ok(members
        .iter()
        .flat_map(|&i| sources[i].time.instants.iter().copied())
        .collect())
}

/// Takes the first group's time axis as the dataset's and requires every other
/// group to cover exactly the same instants.
fn common_time_axis(
    sources: &[SourceVariable],
    groups: &[SourceGroup],
    group_axes: &[Vec<Instant>],
) -> anyhow::Result<TimeAxis> {
    let time = TimeAxis {
        calendar: sources[0].time.calendar,
        instants: group_axes[0].clone(),
    };
    for (g, axis) in group_axes.iter().enumerate().skip(1) {
        if *axis != time.instants {
            let a = &sources[groups[0].1[0]];
            let b = &sources[groups[g].1[0]];
            return Err(InputError(format!(
                "{} and {}: time axes do not match ('{}': {}; '{}': {})",
                a.path.display(),
                b.path.display(),
                groups[0].0,
                describe_axis(a),
                groups[g].0,
                describe_axis(b)
            ))
            .into());
        }
    }
    Ok(time)
}

/// Turns each group into one channel per level, recording which source holds each
/// stretch of time, and rejects duplicate channel names.
fn group_channels(
    sources: &[SourceVariable],
    groups: &[SourceGroup],
) -> anyhow::Result<Vec<Channel>> {
    let mut channels: Vec<Channel> = Vec::new();
    for (_, members) in groups {
        let lead = &sources[members[0]];
        let mut offset = 0;
        let mut parts_per_level: Vec<Vec<ChannelPart>> = vec![Vec::new(); lead.num_channels()];
        for &m in members {
            for (level, parts) in parts_per_level.iter_mut().enumerate() {
                parts.push(ChannelPart {
                    source: m,
                    level,
                    time_offset: offset,
                });
            }
            offset += sources[m].time.len();
        }
        for (name, parts) in lead.channel_names().into_iter().zip(parts_per_level) {
            if channels.iter().any(|c| c.name == name) {
                crate::bail_input!(
                    "two channels are called '{name}': rename one with --var FILE:NAME=ALIAS"
                );
            }
            channels.push(Channel {
                name,
                units: lead.units.clone(),
                long_name: lead.long_name.clone(),
                standard_name: lead.standard_name.clone(),
                parts,
            });
        }
    }
    Ok(channels)
}

/// Reads time steps of a [`Dataset`], keeping its files open between reads.
/// Each thread that reads owns one.
#[derive(Default)]
pub struct StepReader {
    files: HashMap<PathBuf, Store>,
}

impl StepReader {
    /// Reads time step `t` (index on the merged axis) of every channel of `ds`.
    pub fn read(&mut self, ds: &Dataset, t: usize) -> anyhow::Result<State> {
        let cells = ds.grid.len();
        let mut state = State {
            values: vec![0.0; ds.num_channels() * cells],
            valid: vec![false; ds.num_channels() * cells],
        };
        // Each source is read once per step, for all of its levels, then scattered to channels.
        let mut done: Vec<usize> = Vec::new();
        for channel in &ds.channels {
            let part = channel
                .parts
                .iter()
                .rev()
                .find(|p| p.time_offset <= t)
                .with_context(|| format!("time step {t} is outside the data"))?;
            if done.contains(&part.source) {
                continue;
            }
            done.push(part.source);
            let source = &ds.sources[part.source];
            let local_t = t - part.time_offset;
            if local_t >= source.time.len() {
                anyhow::bail!(
                    "time step {t} is outside the data of {}",
                    source.path.display()
                );
            }
            let n = source.num_channels();
            let mut values = vec![0.0f32; n * cells];
            let mut valid = vec![false; n * cells];
            let file = match self.files.entry(source.path.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(open_file(&source.path)?),
            };
            source.read_step(file, local_t, &mut values, &mut valid)?;
            for (c, target) in ds.channels.iter().enumerate() {
                for p in &target.parts {
                    if p.source == part.source {
                        let (src, dst) = (
                            p.level * cells..(p.level + 1) * cells,
                            c * cells..(c + 1) * cells,
                        );
                        state.values[dst.clone()].copy_from_slice(&values[src.clone()]);
                        state.valid[dst].copy_from_slice(&valid[src]);
                    }
                }
            }
        }
        Ok(state)
    }
}
