//! The data arguments every subcommand that reads data shares.

use std::path::PathBuf;

use clap::Args;

use crate::data::{DataSpec, Region, SplitSpec, VarPick, WindowSpec};
use crate::error::InputError;

#[derive(Debug, Clone, Args, Default)]
pub struct DataArgs {
    /// NetCDF files (classic, 64-bit offset or netCDF-4); each contributes all its gridded variables.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Data files, or a config file (.toml/.json) whose [data] table gives them (repeatable).
    #[arg(long = "data", value_name = "FILE")]
    pub data_files: Vec<PathBuf>,
    /// One variable of a file, optionally renamed: FILE:NAME or FILE:NAME=ALIAS (repeatable),
    /// e.g. --var Ustorm.cdf:u=u10 --var U500storm.cdf:u=u500.
    #[arg(long = "var", value_name = "FILE:NAME[=ALIAS]")]
    pub vars: Vec<VarPick>,
    /// A static field on the data's grid given to the model as an input (land-sea mask,
    /// orography, ...): FILE:NAME or FILE:NAME=ALIAS (repeatable); no time dimension or
    /// a time dimension of length 1; normalised over its valid cells, masked cells
    /// flagged.
    #[arg(long = "static", value_name = "FILE:NAME[=ALIAS]")]
    pub statics: Vec<VarPick>,
    /// Keep only this box: lat_min,lat_max,lon_min,lon_max in degrees (lon_min > lon_max crosses the dateline).
    #[arg(long, value_name = "LAT0,LAT1,LON0,LON1", allow_hyphen_values = true)]
    pub region: Option<Region>,
    /// Vertical levels to take from multi-level variables: coordinate values and
    /// inclusive ranges (e.g. 500,850 or 300..700,50), or all; each level becomes a
    /// channel named variable + level (t850).
    #[arg(long, value_name = "LEVELS")]
    pub levels: Option<crate::data::source::LevelChoice>,
    /// Time units for files without CF time, e.g. "hours since 1996-01-05 00:00".
    #[arg(long, value_name = "UNITS")]
    pub time_units: Option<String>,
    /// A config file (TOML or JSON) whose [data] table gives the data; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory that relative paths of the config's [data] table are taken from
    /// (overrides the config's `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataArgs {
    /// The data to load: the config's [data] table (if any) overridden by the flags.
    /// The config file: `--config`, or a `.toml`/`.json` given to `--data`.
    pub fn config_path(&self) -> anyhow::Result<Option<PathBuf>> {
        let configs: Vec<&PathBuf> = self
            .data_files
            .iter()
            .filter(is_config)
            .chain(&self.config)
            .collect();
        match configs[..] {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            _ => crate::bail_input!("give one config file, not {}", configs.len()),
        }
    }

    pub fn to_spec(&self) -> anyhow::Result<DataSpec> {
        let mut files = self.files.clone();
        files.extend(self.data_files.iter().filter(|p| !is_config(p)).cloned());
        let config = self.config_path()?;
        let flags = DataSpec {
            files,
            vars: self.vars.clone(),
            statics: self.statics.clone(),
            region: self.region,
            levels: self.levels.clone(),
            time_units: self.time_units.clone(),
            data_dir: None,
        };
        let Some(path) = config else {
            return Ok(flags);
        };
        let mut spec = crate::config::load_data_section(&path)?;
        if let Some(dir) = &self.data_dir {
            spec.data_dir = Some(dir.clone());
        }
        Ok(spec.resolved().overridden_by(flags))
    }
}

fn is_config(p: &&PathBuf) -> bool {
    p.extension().is_some_and(|e| e == "toml" || e == "json")
}

/// How samples are cut from the time axis, shared by every subcommand that makes samples.
/// Unset flags keep the config's (or the built-in) values.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// Past states the model sees per sample [default: 2].
    #[arg(long)]
    pub input_steps: Option<usize>,
    /// How many time steps ahead the target lies [default: 1].
    #[arg(long)]
    pub lead_steps: Option<usize>,
    /// Fraction of the time axis (from the start) used for training [default: 0.7].
    #[arg(long)]
    pub train_fraction: Option<f64>,
    /// Fraction after the training block used for validation; the test block is the rest [default: 0.15].
    #[arg(long)]
    pub validation_fraction: Option<f64>,
    /// A training period by dates instead of fractions, START..END inclusive
    /// (YYYY-MM-DD or YYYY-MM-DD hh:mm; an end date alone covers its day), repeatable:
    /// e.g. training on both sides of a held-out test period.
    #[arg(long = "train-period", value_name = "START..END")]
    pub train_periods: Vec<String>,
    /// A validation period (as --train-period; repeatable). Without one, no validation.
    #[arg(long = "validation-period", value_name = "START..END")]
    pub validation_periods: Vec<String>,
    /// A test period (as --train-period; repeatable): what eval scores.
    #[arg(long = "test-period", value_name = "START..END")]
    pub test_periods: Vec<String>,
}

impl WindowArgs {
    pub fn spec(&self, base: WindowSpec) -> WindowSpec {
        WindowSpec::lead_spaced(
            self.input_steps.unwrap_or(base.input_steps),
            self.lead_steps.unwrap_or(base.lead_steps),
        )
    }

    /// The split: `base` with each split's period flags replacing its periods (and
    /// the fractions), or fraction flags replacing its fractions (and periods).
    pub fn split(&self, base: SplitSpec) -> Result<SplitSpec, InputError> {
        let flags = [
            &self.train_periods,
            &self.validation_periods,
            &self.test_periods,
        ];
        let any_period = flags.iter().any(|f| !f.is_empty());
        let any_fraction = self.train_fraction.is_some() || self.validation_fraction.is_some();
        if any_period && any_fraction {
            return Err(InputError(
                "--train-fraction/--validation-fraction and the --*-period flags are alternatives: give one kind".into(),
            ));
        }
        let spec = if any_period {
            let mut periods = base.periods.unwrap_or_default();
            let lists = [
                &mut periods.train,
                &mut periods.validation,
                &mut periods.test,
            ];
            for (list, flag) in lists.into_iter().zip(flags) {
                if !flag.is_empty() {
                    list.clone_from(flag);
                }
            }
            SplitSpec {
                periods: Some(periods),
                ..SplitSpec::default()
            }
        } else if any_fraction {
            SplitSpec {
                train: self.train_fraction.unwrap_or(base.train),
                validation: self.validation_fraction.unwrap_or(base.validation),
                periods: None,
            }
        } else {
            base
        };
        spec.validate()?;
        Ok(spec.normalised())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        window: WindowArgs,
    }

    fn split(flags: &[&str], base: SplitSpec) -> Result<SplitSpec, InputError> {
        let cli = Cli::try_parse_from([&["meshcast"][..], flags].concat()).unwrap();
        cli.window.split(base)
    }

    #[test]
    fn each_splits_period_flags_replace_only_its_periods() {
        let config: SplitSpec = toml::from_str(
            "train = 0.5\n[periods]\ntrain = ['2000-01-01..2000-01-05']\ntest = ['2000-01-06..2000-01-07']",
        )
        .unwrap();
        let s = split(&["--test-period", "2000-01-08..2000-01-09"], config.clone()).unwrap();
        let p = s.periods.clone().unwrap();
        assert_eq!(
            (p.train, p.test),
            (
                vec!["2000-01-01..2000-01-05".to_string()],
                vec!["2000-01-08..2000-01-09".to_string()]
            )
        );
        // The unused fractions are reset: the same split compares equal however given.
        assert_eq!(s.train, SplitSpec::default().train);
        let from_flags = split(
            &[
                "--train-period",
                "2000-01-01..2000-01-05",
                "--test-period",
                "2000-01-08..2000-01-09",
            ],
            SplitSpec::default(),
        )
        .unwrap();
        assert_eq!(from_flags, s);
        // Fraction flags replace periods; mixing both kinds, or no training period, is refused.
        assert_eq!(
            split(&["--train-fraction", "0.6"], config.clone())
                .unwrap()
                .periods,
            None
        );
        let e = split(
            &[
                "--train-fraction",
                "0.6",
                "--test-period",
                "2000-01-08..2000-01-09",
            ],
            config,
        )
        .unwrap_err();
        assert!(e.0.contains("alternatives"), "{}", e.0);
        let e = split(
            &["--test-period", "2000-01-08..2000-01-09"],
            SplitSpec::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("--train-period"), "{}", e.0);
    }
}
