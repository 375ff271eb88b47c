//! Library enums as flag values: each is parsed by its own `FromStr` and its spellings
//! are listed in `--help`, so the library needs no clap.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use crate::data::generate::NcFormat;
use crate::eval::ScoredSplit;
use crate::model::{Aggregation, Batching, MixedPrecision};

/// An enum a flag takes: the spellings `--help` lists, which its `FromStr` accepts,
/// and older or alternative spellings it accepts too (alias, name).
pub trait Choice: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static {
    const NAMES: &'static [&'static str];
    const ALIASES: &'static [(&'static str, &'static str)] = &[];
}

impl Choice for Batching {
    const NAMES: &'static [&'static str] = Batching::NAMES;
}

impl Choice for Aggregation {
    const NAMES: &'static [&'static str] = Aggregation::NAMES;
    const ALIASES: &'static [(&'static str, &'static str)] = &[("indexadd", "index-add")];
}

impl Choice for MixedPrecision {
    const NAMES: &'static [&'static str] = MixedPrecision::NAMES;
    /// Benchmark reports name the activations' dtype, `f32`, where runs say `off`.
    const ALIASES: &'static [(&'static str, &'static str)] = &[("f32", "off")];
}

impl Choice for NcFormat {
    const NAMES: &'static [&'static str] = NcFormat::NAMES;
}

impl Choice for crate::distributed::Distributed {
    const NAMES: &'static [&'static str] = crate::distributed::Distributed::NAMES;
}

impl Choice for ScoredSplit {
    const NAMES: &'static [&'static str] = ScoredSplit::NAMES;
}

/// The value parser of a flag taking `T` (an alias parses as its name).
pub fn choice<T: Choice>() -> impl TypedValueParser<Value = T> {
    let values = T::NAMES.iter().map(|&name| {
        let aliases = T::ALIASES.iter().filter(move |(_, n)| *n == name);
        PossibleValue::new(name).aliases(aliases.map(|(alias, _)| *alias))
    });
    PossibleValuesParser::new(values).try_map(|s| s.parse::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: Choice>(text: &str) -> Result<T, clap::Error> {
        let cmd = clap::Command::new("t");
        choice::<T>().parse_ref(&cmd, None, std::ffi::OsStr::new(text))
    }

    #[test]
    fn names_and_aliases_parse() {
        assert_eq!(parse::<MixedPrecision>("off").unwrap(), MixedPrecision::Off);
        assert_eq!(parse::<MixedPrecision>("f32").unwrap(), MixedPrecision::Off);
        assert_eq!(parse::<MixedPrecision>("f64").unwrap(), MixedPrecision::F64);
        assert_eq!(
            parse::<Aggregation>("indexadd").unwrap(),
            Aggregation::IndexAdd
        );
        assert_eq!(
            parse::<Batching>("replicated").unwrap(),
            Batching::Replicated
        );
        assert!(parse::<Batching>("block").is_err());
    }
}
