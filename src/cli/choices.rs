//! Library enums as flag values: each is parsed by its own `FromStr` and its spellings
//! are listed in `--help`, so the library needs no clap.

use clap::builder::{PossibleValuesParser, TypedValueParser};

use crate::data::generate::NcFormat;
use crate::model::{Aggregation, Batching, MixedPrecision};

/// An enum a flag takes: the spellings `--help` lists, which its `FromStr` accepts.
pub trait Choice: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static {
    const NAMES: &'static [&'static str];
}

impl Choice for Batching {
    const NAMES: &'static [&'static str] = Batching::NAMES;
}

impl Choice for Aggregation {
    const NAMES: &'static [&'static str] = Aggregation::NAMES;
}

impl Choice for MixedPrecision {
    const NAMES: &'static [&'static str] = MixedPrecision::NAMES;
}

impl Choice for NcFormat {
    const NAMES: &'static [&'static str] = NcFormat::NAMES;
}

/// The value parser of a flag taking `T`.
pub fn choice<T: Choice>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::NAMES.iter().copied()).try_map(|s| s.parse::<T>())
}
