//! Time axes: CF `"<unit> since <date>"` with its calendar, and the non-CF axes
//! real files have (integer hours plus a text reference time, as in the storm1996 files).
//!
//! Times are kept as whole seconds since 0001-01-01 00:00 *in the axis' calendar*,
//! so that merging files only needs equal calendars and equal second counts.

use std::fmt;

use serde::{Deserialize, Serialize};

/// CF calendars (`calendar` attribute). `standard`/`gregorian` are treated as proleptic
/// Gregorian: the 1582 switch to the Julian calendar lies far outside weather data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Calendar {
    ProlepticGregorian,
    Julian,
    NoLeap,
    AllLeap,
    Day360,
}

impl Calendar {
    pub fn parse(name: &str) -> Result<Calendar, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "standard" | "gregorian" | "proleptic_gregorian" => {
                Ok(Calendar::ProlepticGregorian)
            }
            "julian" => Ok(Calendar::Julian),
            "noleap" | "365_day" => Ok(Calendar::NoLeap),
            "all_leap" | "366_day" => Ok(Calendar::AllLeap),
            "360_day" => Ok(Calendar::Day360),
            other => Err(format!("unsupported calendar '{other}'")),
        }
    }

    fn is_leap(self, year: i64) -> bool {
        match self {
            Calendar::ProlepticGregorian => (year % 4 == 0 && year % 100 != 0) || year % 400 == 0,
            Calendar::Julian => year % 4 == 0,
            Calendar::NoLeap | Calendar::Day360 => false,
            Calendar::AllLeap => true,
        }
    }

    pub fn month_lengths(self, year: i64) -> [i64; 12] {
        if self == Calendar::Day360 {
            return [30; 12];
        }
        let feb = if self.is_leap(year) { 29 } else { 28 };
        [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    }

    pub fn year_length(self, year: i64) -> i64 {
        self.month_lengths(year).iter().sum()
    }

    /// Days from 0001-01-01 to `date` in this calendar.
    fn days_from_origin(self, y: i64, m: u32, d: u32) -> i64 {
        let years_before = y - 1;
        let mut days = match self {
            Calendar::ProlepticGregorian => {
                365 * years_before + years_before.div_euclid(4) - years_before.div_euclid(100)
                    + years_before.div_euclid(400)
            }
            Calendar::Julian => 365 * years_before + years_before.div_euclid(4),
            Calendar::NoLeap => 365 * years_before,
            Calendar::AllLeap => 366 * years_before,
            Calendar::Day360 => 360 * years_before,
        };
        days += self.month_lengths(y)[..(m as usize - 1)]
            .iter()
            .sum::<i64>();
        days + d as i64 - 1
    }

    fn date_from_days(self, mut days: i64) -> (i64, u32, u32) {
        // Jump by 400-year blocks (an exact number of days in every calendar here), then walk.
        let block = self.days_from_origin(401, 1, 1);
        let mut year = 1 + 400 * days.div_euclid(block);
        days = days.rem_euclid(block);
        while days >= self.year_length(year) {
            days -= self.year_length(year);
            year += 1;
        }
        let mut month = 0;
        for (i, len) in self.month_lengths(year).iter().enumerate() {
            month = i;
            if days < *len {
                break;
            }
            days -= len;
        }
        (year, month as u32 + 1, days as u32 + 1)
    }
}

impl Calendar {
    /// Where `t` lies in its year: days since 1 January 00:00 (fractional) and the
    /// year's length in days, in this calendar (a 360-day year for `360_day`).
    pub fn year_position(self, t: Instant) -> (f64, f64) {
        let date = DateTime::from_instant(t, self);
        let start = self.days_from_origin(date.year, 1, 1) * 86_400;
        let days = (t.seconds - start) as f64 / 86_400.0;
        (days, self.year_length(date.year) as f64)
    }
}

/// A point in time: seconds since 0001-01-01 00:00:00 in `calendar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Instant {
    pub seconds: i64,
}

/// A calendar date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl DateTime {
    pub fn to_instant(self, cal: Calendar) -> Instant {
        let days = cal.days_from_origin(self.year, self.month, self.day);
        Instant {
            seconds: days * 86_400 + (self.hour * 3600 + self.minute * 60 + self.second) as i64,
        }
    }

    pub fn from_instant(t: Instant, cal: Calendar) -> DateTime {
        let days = t.seconds.div_euclid(86_400);
        let secs = t.seconds.rem_euclid(86_400) as u32;
        let (year, month, day) = cal.date_from_days(days);
        DateTime {
            year,
            month,
            day,
            hour: secs / 3600,
            minute: secs % 3600 / 60,
            second: secs % 60,
        }
    }

    /// Parses `1996-01-05`, `1996-01-05 00:00:00`, `1996-1-5T6:00Z`, `1996 01 05 00:00`
    /// (the storm1996 `reftime` text) and similar; fractional seconds and a `Z` or
    /// `+00:00` zone are accepted (other zones are refused).
    pub fn parse(text: &str, cal: Calendar) -> Result<DateTime, String> {
        let bad = || format!("cannot read a date from '{text}'");
        let t = text
            .trim()
            .trim_end_matches('Z')
            .trim_end_matches("UTC")
            .trim();
        let t = t
            .strip_suffix("+00:00")
            .or_else(|| t.strip_suffix("+0000"))
            .unwrap_or(t)
            .trim();
        // Split date and time at 'T' or the first space after a '-' date, or treat a
        // space-separated "YYYY MM DD hh:mm" as fields.
        let fields: Vec<&str> = t
            .split(['-', ' ', 'T', ':', '/'])
            .filter(|s| !s.is_empty())
            .collect();
        if fields.len() < 3 || fields.len() > 6 {
            return Err(bad());
        }
        let year: i64 = fields[0].parse().map_err(|_| bad())?;
        let month: u32 = fields[1].parse().map_err(|_| bad())?;
        let day: u32 = fields[2].parse().map_err(|_| bad())?;
        let num = |i: usize| -> Result<f64, String> {
            fields
                .get(i)
                .map_or(Ok(0.0), |s| s.parse::<f64>().map_err(|_| bad()))
        };
        let (hour, minute, second) = (num(3)?, num(4)?, num(5)?);
        if !(1..=12).contains(&month)
            || day < 1
            || day as i64 > cal.month_lengths(year)[month as usize - 1]
            || !(0.0..24.0).contains(&hour)
            || !(0.0..60.0).contains(&minute)
            || !(0.0..61.0).contains(&second)
        {
            return Err(format!("'{text}' is not a valid date in this calendar"));
        }
        Ok(DateTime {
            year,
            month,
            day,
            hour: hour as u32,
            minute: minute as u32,
            second: second.floor() as u32,
        })
    }
}

/// The last instant an end `text` names: a date alone (no hour) covers its whole day,
/// so that every `..END` and `--end` of meshcast includes END's day.
pub fn parse_end(text: &str, cal: Calendar) -> Result<Instant, String> {
    let end = DateTime::parse(text, cal)?.to_instant(cal);
    let numbers = text
        .split(['-', ' ', 'T', ':', '/'])
        .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
        .count();
    let rest_of_day = if numbers == 3 { 86_399 } else { 0 };
    Ok(Instant {
        seconds: end.seconds + rest_of_day,
    })
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute
        )?;
        if self.second != 0 {
            write!(f, ":{:02}", self.second)?;
        }
        Ok(())
    }
}

/// Parsed CF time units: `unit since reference`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeUnits {
    pub unit: TimeUnit,
    pub reference: DateTime,
    pub calendar: Calendar,
}

/// The length of one unit of a time value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeUnit {
    Seconds(f64),
    /// Calendar months (1 per unit, or 12 for years): whole numbers only, as cftime
    /// (and so xarray) decodes them.
    Months(i64),
}

impl TimeUnits {
    /// Parses `"hours since 1996-01-05 00:00"` and friends, including `months since` and
    /// `years since`, read as calendar months and years.
    pub fn parse(units: &str, cal: Calendar) -> Result<TimeUnits, String> {
        let lower = units.trim().to_ascii_lowercase();
        let Some((unit, since)) = lower.split_once(" since ") else {
            return Err(format!(
                "time units '{units}' are not of the form '<unit> since <date>'"
            ));
        };
        let unit = match unit.trim() {
            "seconds" | "second" | "secs" | "sec" | "s" => TimeUnit::Seconds(1.0),
            "minutes" | "minute" | "mins" | "min" => TimeUnit::Seconds(60.0),
            "hours" | "hour" | "hrs" | "hr" | "h" => TimeUnit::Seconds(3600.0),
            "days" | "day" | "d" => TimeUnit::Seconds(86_400.0),
            "months" | "month" => TimeUnit::Months(1),
            "years" | "year" => TimeUnit::Months(12),
            other => return Err(format!("unknown time unit '{other}' in '{units}'")),
        };
        Ok(TimeUnits {
            unit,
            reference: DateTime::parse(since, cal)?,
            calendar: cal,
        })
    }

    /// Hours since `reference`.
    pub fn hours_since(reference: DateTime, calendar: Calendar) -> TimeUnits {
        TimeUnits {
            unit: TimeUnit::Seconds(3600.0),
            reference,
            calendar,
        }
    }

    /// The instant of time value `value`; a fractional month or year, or a month
    /// without the reference's day (the 31st, say), is refused.
    pub fn instant(&self, value: f64) -> Result<Instant, String> {
        let start = self.reference.to_instant(self.calendar);
        let months = match self.unit {
            TimeUnit::Seconds(s) => {
                let seconds = start.seconds + (value * s).round() as i64;
                return Ok(Instant { seconds });
            }
            TimeUnit::Months(m) => m,
        };
        if value.fract() != 0.0 || !value.is_finite() {
            return Err(format!(
                "time value {value} is not a whole number of {}: calendar months and years \
                 have no fixed length, so fractions of them are not read",
                if months == 12 { "years" } else { "months" }
            ));
        }
        let r = self.reference;
        let total = r.year * 12 + i64::from(r.month) - 1 + value as i64 * months;
        let (year, month) = (total.div_euclid(12), total.rem_euclid(12) as u32 + 1);
        let days = self.calendar.month_lengths(year)[month as usize - 1];
        if i64::from(r.day) > days {
            return Err(format!(
                "time value {value}: {year:04}-{month:02} has no day {} (the reference's day)",
                r.day
            ));
        }
        Ok(DateTime { year, month, ..r }.to_instant(self.calendar))
    }
}

/// A decoded, strictly increasing time axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeAxis {
    pub calendar: Calendar,
    pub instants: Vec<Instant>,
}

impl Default for TimeAxis {
    /// No times (a static field's).
    fn default() -> Self {
        TimeAxis {
            calendar: Calendar::ProlepticGregorian,
            instants: Vec::new(),
        }
    }
}

impl TimeAxis {
    pub fn len(&self) -> usize {
        self.instants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instants.is_empty()
    }

    pub fn datetime(&self, i: usize) -> DateTime {
        DateTime::from_instant(self.instants[i], self.calendar)
    }

    /// The steps inside the period `START..END`, both ends included (an end date alone
    /// covers its day; see [`parse_end`]); refused when it holds none.
    pub fn steps_within(&self, period: &str) -> Result<std::ops::Range<usize>, String> {
        let (a, b) = period
            .split_once("..")
            .ok_or("must look like START..END (YYYY-MM-DD or YYYY-MM-DD hh:mm each)")?;
        let start = DateTime::parse(a, self.calendar)?.to_instant(self.calendar);
        let end = parse_end(b, self.calendar)?;
        if start > end {
            return Err("it starts after it ends".into());
        }
        let first = self.instants.partition_point(|&t| t < start);
        let stop = self.instants.partition_point(|&t| t <= end);
        if first >= stop {
            return Err(match self.len() {
                0 => "the data have no time steps".into(),
                n => format!(
                    "holds no time step of the data ({} to {})",
                    self.datetime(0),
                    self.datetime(n - 1)
                ),
            });
        }
        Ok(first..stop)
    }

    /// The most common spacing in seconds (None for fewer than two steps).
    pub fn step_seconds(&self) -> Option<i64> {
        let mut d: Vec<i64> = self
            .instants
            .windows(2)
            .map(|w| w[1].seconds - w[0].seconds)
            .collect();
        d.sort_unstable();
        d.get(d.len() / 2).copied()
    }

    /// True when every step equals the most common one.
    pub fn is_regular(&self) -> bool {
        let step = self.step_seconds();
        self.instants
            .windows(2)
            .all(|w| Some(w[1].seconds - w[0].seconds) == step)
    }
}

/// Human form of a step length: `6 h`, `30 min`, `1 d`.
pub fn format_step(seconds: i64) -> String {
    if seconds % 86_400 == 0 {
        format!("{} d", seconds / 86_400)
    } else if seconds % 3600 == 0 {
        format!("{} h", seconds / 3600)
    } else if seconds % 60 == 0 {
        format!("{} min", seconds / 60)
    } else {
        format!("{seconds} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_dates_in_every_calendar() {
        for cal in [
            Calendar::ProlepticGregorian,
            Calendar::Julian,
            Calendar::NoLeap,
            Calendar::AllLeap,
            Calendar::Day360,
        ] {
            for (y, m, d) in [
                (1, 1, 1),
                (1600, 2, 28),
                (1996, 1, 5),
                (2000, 12, 30),
                (2100, 3, 1),
                (-50, 6, 15),
            ] {
                let dt = DateTime {
                    year: y,
                    month: m,
                    day: d,
                    hour: 18,
                    minute: 30,
                    second: 0,
                };
                assert_eq!(
                    DateTime::from_instant(dt.to_instant(cal), cal),
                    dt,
                    "{cal:?} {dt}"
                );
            }
        }
    }

    #[test]
    fn gregorian_day_counts_match_chrono() {
        use chrono::NaiveDate;
        let cal = Calendar::ProlepticGregorian;
        let epoch = NaiveDate::from_ymd_opt(1, 1, 1).unwrap();
        for (y, m, d) in [(1970, 1, 1), (1996, 2, 29), (2024, 12, 31), (1582, 10, 10)] {
            let ours = cal.days_from_origin(y, m, d);
            let theirs = (NaiveDate::from_ymd_opt(y as i32, m, d).unwrap() - epoch).num_days();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn decodes_cf_units() {
        let cal = Calendar::ProlepticGregorian;
        let u = TimeUnits::parse("hours since 1996-01-05 00:00:00", cal).unwrap();
        let t = DateTime::from_instant(u.instant(30.0).unwrap(), cal);
        assert_eq!(t.to_string(), "1996-01-06 06:00");
        let u = TimeUnits::parse("days since 2000-02-28", Calendar::NoLeap).unwrap();
        assert_eq!(
            DateTime::from_instant(u.instant(1.0).unwrap(), Calendar::NoLeap).to_string(),
            "2000-03-01 00:00"
        );
        let u = TimeUnits::parse("days since 2000-02-28", Calendar::Day360).unwrap();
        assert_eq!(
            DateTime::from_instant(u.instant(2.0).unwrap(), Calendar::Day360).to_string(),
            "2000-02-30 00:00"
        );
        assert!(TimeUnits::parse("hours", cal).is_err());
    }

    /// As cftime decodes them: whole calendar months and years from the reference.
    #[test]
    fn decodes_calendar_months_and_years() {
        let at = |units: &str, cal, v: f64| {
            let u = TimeUnits::parse(units, cal).unwrap();
            u.instant(v)
                .map(|t| DateTime::from_instant(t, cal).to_string())
        };
        let greg = Calendar::ProlepticGregorian;
        let cases = [
            ("months since 1958-1-1", greg, 0.0, "1958-01-01 00:00"),
            ("months since 1958-1-1", greg, 20.0, "1959-09-01 00:00"),
            ("months since 1958-1-1", greg, -1.0, "1957-12-01 00:00"),
            (
                "months since 2000-01-15 12:00",
                Calendar::Day360,
                13.0,
                "2001-02-15 12:00",
            ),
            (
                "years since 1850-01-01",
                Calendar::NoLeap,
                150.0,
                "2000-01-01 00:00",
            ),
            (
                "months since 2000-01-30",
                Calendar::Day360,
                1.0,
                "2000-02-30 00:00",
            ),
        ];
        for (units, cal, v, want) in cases {
            assert_eq!(at(units, cal, v).unwrap(), want, "{units} {v}");
        }
        let e = at("months since 1958-1-1", greg, 1.5).unwrap_err();
        assert!(e.contains("not a whole number of months"), "{e}");
        let e = at("months since 2000-01-31", greg, 1.0).unwrap_err();
        assert!(e.contains("2000-02 has no day 31"), "{e}");
    }

    #[test]
    fn an_end_date_alone_covers_its_day_and_a_period_includes_both_ends() {
        let cal = Calendar::NoLeap;
        let day = DateTime::parse("2001-02-28", cal).unwrap().to_instant(cal);
        assert_eq!(
            parse_end("2001-02-28", cal).unwrap().seconds,
            day.seconds + 86_399
        );
        assert_eq!(
            parse_end("2001-02-28 UTC", cal).unwrap().seconds,
            day.seconds + 86_399
        );
        assert_eq!(parse_end("2001-02-28T00", cal).unwrap(), day);
        assert_eq!(
            parse_end("2001-02-28 06:00", cal).unwrap().seconds,
            day.seconds + 6 * 3600
        );
        // Six-hourly from 2001-02-27 00:00: the 28th (noleap) is steps 4..8.
        let axis = TimeAxis {
            calendar: cal,
            instants: (0..12)
                .map(|i| Instant {
                    seconds: day.seconds - 86_400 + i * 6 * 3600,
                })
                .collect(),
        };
        assert_eq!(axis.steps_within("2001-02-28..2001-02-28"), Ok(4..8));
        assert_eq!(
            axis.steps_within("2001-02-27 06:00..2001-02-28 00:00"),
            Ok(1..5)
        );
        assert!(axis
            .steps_within("2001-03-05..2001-03-06")
            .unwrap_err()
            .contains("holds no time step"));
        assert!(axis
            .steps_within("2001-02-28..2001-02-27")
            .unwrap_err()
            .contains("starts after"));
    }

    #[test]
    fn parses_text_reference_times() {
        let cal = Calendar::ProlepticGregorian;
        assert_eq!(
            DateTime::parse("1996 01 05 00:00", cal)
                .unwrap()
                .to_string(),
            "1996-01-05 00:00"
        );
        assert_eq!(
            DateTime::parse("1979-1-1T06:00:00Z", cal)
                .unwrap()
                .to_string(),
            "1979-01-01 06:00"
        );
        assert!(DateTime::parse("1996-02-30", cal).is_err());
        assert!(DateTime::parse("yesterday", cal).is_err());
    }
}
