//! What data a run uses: files, `--var FILE:NAME[=ALIAS]` picks, region, levels.
//! The same arguments are accepted by every subcommand and by a config's `[data]` table.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::grid::Region;
use super::source::ReadOptions;

/// One `--var FILE:NAME[=ALIAS]`: variable NAME of FILE, called ALIAS in the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarPick {
    pub path: PathBuf,
    pub name: String,
    pub alias: Option<String>,
}

/// A name every NetCDF format accepts (the classic rules): forecasts are written
/// under these names, so a bad one must be refused before training, not after.
fn is_netcdf_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.+-@".contains(c))
}

impl FromStr for VarPick {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("'{s}' must look like FILE:NAME or FILE:NAME=ALIAS");
        let (path, rest) = s.rsplit_once(':').ok_or_else(usage)?;
        let (name, alias) = match rest.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().to_string())),
            None => (rest.trim(), None),
        };
        if path.is_empty() || name.is_empty() || alias.as_deref() == Some("") {
            return Err(usage());
        }
        if let Some(bad) = alias.as_deref().filter(|a| !is_netcdf_name(a)) {
            return Err(format!(
                "'{s}': alias '{bad}' is not a NetCDF variable name (a letter or _, then letters, digits, _ . + - @)"
            ));
        }
        Ok(VarPick {
            path: PathBuf::from(path),
            name: name.to_string(),
            alias,
        })
    }
}

/// Everything that says which data to load. Built from flags, a config, or both
/// (flags win); paths are taken as given (relative to the working directory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Files whose every gridded variable is used.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Single variables, possibly renamed: `"Ustorm.cdf:u=u10"`.
    #[serde(default, with = "var_strings")]
    pub vars: Vec<VarPick>,
    /// Static fields given to the model as inputs (land-sea mask, orography):
    /// `"lsm.nc:lsm"`, `"orog.nc:z=orography"`.
    #[serde(default, with = "var_strings", skip_serializing_if = "Vec::is_empty")]
    pub statics: Vec<VarPick>,
    #[serde(default, with = "region_string")]
    pub region: Option<Region>,
    #[serde(default)]
    pub levels: Option<crate::data::source::LevelChoice>,
    #[serde(default)]
    pub time_units: Option<String>,
    /// Directory relative `files` and `vars` paths are taken from (a config's convenience).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

impl DataSpec {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.vars.is_empty()
    }

    /// Joins relative paths onto `data_dir` (and clears it).
    pub fn resolved(mut self) -> DataSpec {
        if let Some(dir) = self.data_dir.take() {
            for f in &mut self.files {
                if f.is_relative() {
                    *f = dir.join(&*f);
                }
            }
            for v in self.vars.iter_mut().chain(&mut self.statics) {
                if v.path.is_relative() {
                    v.path = dir.join(&v.path);
                }
            }
        }
        self
    }

    /// [`DataSpec::resolved`], then every path made absolute (symbolic links and `..`
    /// resolved where the file exists): a run records where its data are, so eval
    /// works from any directory and the same file given by another path is the same.
    pub fn absolute(self) -> DataSpec {
        let absolute = |p: &PathBuf| {
            std::fs::canonicalize(p)
                .or_else(|_| std::path::absolute(p))
                .unwrap_or_else(|_| p.clone())
        };
        let mut spec = self.resolved();
        for f in &mut spec.files {
            *f = absolute(f);
        }
        for v in spec.vars.iter_mut().chain(&mut spec.statics) {
            v.path = absolute(&v.path);
        }
        spec
    }

    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            region: self.region,
            levels: self.levels.clone(),
            time_units: self.time_units.clone(),
        }
    }

    /// Overlays the non-empty parts of `flags` on this spec (a config's data section).
    pub fn overridden_by(mut self, flags: DataSpec) -> DataSpec {
        if !flags.is_empty() {
            self.files = flags.files;
            self.vars = flags.vars;
        }
        if !flags.statics.is_empty() {
            self.statics = flags.statics;
        }
        self.region = flags.region.or(self.region);
        self.levels = flags.levels.or(self.levels);
        self.time_units = flags.time_units.or(self.time_units);
        self
    }
}

mod var_strings {
    use super::VarPick;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[VarPick], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|p| match &p.alias {
            Some(a) => format!("{}:{}={a}", p.path.display(), p.name),
            None => format!("{}:{}", p.path.display(), p.name),
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<VarPick>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(D::Error::custom))
            .collect()
    }
}

/// `Option<Region>` as the `"lat_min,lat_max,lon_min,lon_max"` string users write.
pub(crate) mod region_string {
    use super::Region;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &Option<Region>, s: S) -> Result<S::Ok, S::Error> {
        match r {
            Some(r) => s.serialize_str(&format!(
                "{},{},{},{}",
                r.lat_min, r.lat_max, r.lon_min, r.lon_max
            )),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Region>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_var_picks() {
        let p: VarPick = "data/Ustorm.cdf:u=u10".parse().unwrap();
        assert_eq!(p.path, PathBuf::from("data/Ustorm.cdf"));
        assert_eq!(p.name, "u");
        assert_eq!(p.alias.as_deref(), Some("u10"));
        let p: VarPick = "a.nc:t".parse().unwrap();
        assert_eq!(p.alias, None);
        assert!("a.nc".parse::<VarPick>().is_err());
        assert!("a.nc:t=".parse::<VarPick>().is_err());
    }

    #[test]
    fn config_data_section_round_trips() {
        let toml_text = r#"
            vars = ["../shared/data/storm1996/Ustorm.cdf:u=u10", "x.nc:v"]
            region = "20,50,-120,-60"
            levels = [500.0]
        "#;
        let spec: DataSpec = toml::from_str(toml_text).unwrap();
        assert_eq!(spec.vars.len(), 2);
        assert_eq!(spec.region.unwrap().lat_max, 50.0);
        let back: DataSpec = toml::from_str(&toml::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }
}
