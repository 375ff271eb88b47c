//! Forcings computed from time and place, never read from files: the cosine of the
//! solar zenith angle, the top-of-atmosphere (TOA) incident solar radiation over the
//! model step, and the local time of day and time of year as sin/cos pairs. GraphCast
//! feeds the same at every grid node for the input times and the target time.
//!
//! The sun's position is the Astronomical Almanac's low-precision formula (as in
//! Michalsky, 1988, Solar Energy 40(3), and NOAA's solar calculator): mean longitude
//! and anomaly from the days since J2000.0, ecliptic longitude, obliquity, declination,
//! equation of time and Earth-Sun distance; about 0.01 deg between 1950 and 2050. The
//! solar constant is 1361 W m-2 (Kopp and Lean, 2011, GRL 38, L01706). Tests compare
//! the zenith angle with NREL's SPA and the TOA mean with an independent integral
//! (pvlib). In a 360-, 365- or 366-day calendar a date keeps its fraction of the year.

use serde::{Deserialize, Serialize};

use super::time::{Calendar, DateTime, Instant};

/// The solar constant, W m-2 (Kopp and Lean 2011): the TOA forcing is given in its units.
pub const SOLAR_CONSTANT: f64 = 1361.0;

/// One forcing; each gives one or two features per node and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forcing {
    /// Cosine of the solar zenith angle at the time (negative at night).
    CosZenith,
    /// Mean TOA incident solar radiation over the model step ending at the time, as a
    /// fraction of the solar constant (the integral over the step, divided by its length).
    ToaRadiation,
    /// Local mean solar time (UTC + longitude / 15 h) as sin and cos of its daily angle.
    LocalTime,
    /// Fraction of the calendar year as sin and cos of its yearly angle.
    YearProgress,
}

impl Forcing {
    /// Every forcing, in the order of the features: the default of new runs.
    pub const ALL: [Forcing; 4] = [
        Forcing::CosZenith,
        Forcing::ToaRadiation,
        Forcing::LocalTime,
        Forcing::YearProgress,
    ];

    /// Spellings of flags and configs, in the order of [`Forcing::ALL`].
    pub const NAMES: [&'static str; 4] =
        ["cos_zenith", "toa_radiation", "local_time", "year_progress"];

    /// Features this forcing adds per node and time.
    pub fn width(self) -> usize {
        match self {
            Forcing::CosZenith | Forcing::ToaRadiation => 1,
            Forcing::LocalTime | Forcing::YearProgress => 2,
        }
    }

    /// A comma-separated list (`none` or empty: no forcings; `all`: every one).
    pub fn parse_list(text: &str) -> Result<Vec<Forcing>, String> {
        match text.trim() {
            "" | "none" => return Ok(Vec::new()),
            "all" => return Ok(Forcing::ALL.to_vec()),
            _ => {}
        }
        let mut out: Vec<Forcing> = Vec::new();
        for name in text.split(',').map(str::trim) {
            let Some(k) = Forcing::NAMES.iter().position(|n| *n == name) else {
                return Err(format!(
                    "unknown forcing '{name}' (expected {}, all or none)",
                    Forcing::NAMES.join(", ")
                ));
            };
            if !out.contains(&Forcing::ALL[k]) {
                out.push(Forcing::ALL[k]);
            }
        }
        Ok(out)
    }
}

/// Features per node and time of `forcings`.
pub fn width(forcings: &[Forcing]) -> usize {
    forcings.iter().map(|f| f.width()).sum()
}

/// The sun seen from the whole Earth at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sun {
    sin_decl: f64,
    cos_decl: f64,
    /// Cosine and sine of the hour angle at longitude 0 (0 at solar noon).
    cos_hour_angle_0: f64,
    sin_hour_angle_0: f64,
    /// `(mean distance / distance)^2`.
    distance_factor: f64,
}

/// Where a node is, with the sines and cosines every forcing needs precomputed (the
/// hour angle at a node is the one at longitude 0 plus its longitude).
#[derive(Debug, Clone, Copy)]
pub struct NodePlace {
    lon: f64,
    sin_lat: f64,
    cos_lat: f64,
    sin_lon: f64,
    cos_lon: f64,
}

impl NodePlace {
    /// Latitude and longitude in degrees.
    pub fn new(lat: f64, lon: f64) -> NodePlace {
        let (sin_lat, cos_lat) = lat.to_radians().sin_cos();
        let (sin_lon, cos_lon) = lon.to_radians().sin_cos();
        NodePlace {
            lon,
            sin_lat,
            cos_lat,
            sin_lon,
            cos_lon,
        }
    }
}

impl Sun {
    pub fn at(t: Instant, calendar: Calendar) -> Sun {
        let n = days_since_j2000(t, calendar);
        let mean_longitude = (280.460 + 0.985_647_4 * n).rem_euclid(360.0);
        let g = (357.528 + 0.985_600_3 * n).to_radians();
        let ecliptic_longitude =
            (mean_longitude + 1.915 * g.sin() + 0.020 * (2.0 * g).sin()).to_radians();
        let obliquity = (23.439 - 0.000_000_4 * n).to_radians();
        let right_ascension = (obliquity.cos() * ecliptic_longitude.sin())
            .atan2(ecliptic_longitude.cos())
            .to_degrees();
        let sin_decl = obliquity.sin() * ecliptic_longitude.sin();
        // Equation of time (degrees): mean minus apparent right ascension.
        let eqtime = (mean_longitude - right_ascension + 180.0).rem_euclid(360.0) - 180.0;
        let utc_degrees = t.seconds.rem_euclid(86_400) as f64 / 240.0;
        let distance = 1.00014 - 0.01671 * g.cos() - 0.00014 * (2.0 * g).cos();
        let (sin_h0, cos_h0) = (utc_degrees - 180.0 + eqtime).to_radians().sin_cos();
        Sun {
            sin_decl,
            cos_decl: (1.0 - sin_decl * sin_decl).sqrt(),
            cos_hour_angle_0: cos_h0,
            sin_hour_angle_0: sin_h0,
            distance_factor: 1.0 / (distance * distance),
        }
    }

    /// Cosine of the zenith angle at `place`.
    pub fn cos_zenith(&self, place: &NodePlace) -> f64 {
        let cos_hour_angle =
            self.cos_hour_angle_0 * place.cos_lon - self.sin_hour_angle_0 * place.sin_lon;
        place.sin_lat * self.sin_decl + place.cos_lat * self.cos_decl * cos_hour_angle
    }

    /// Instantaneous TOA incident radiation in W m-2.
    pub fn toa(&self, place: &NodePlace) -> f64 {
        SOLAR_CONSTANT * self.distance_factor * self.cos_zenith(place).max(0.0)
    }
}

/// Days since J2000.0 (2000-01-01 12:00 UTC): exact in the Gregorian calendar; in
/// another calendar the same fraction of a mean tropical year, so seasons stay put.
fn days_since_j2000(t: Instant, calendar: Calendar) -> f64 {
    const TROPICAL_YEAR: f64 = 365.2422;
    if calendar == Calendar::ProlepticGregorian {
        let j2000 = DateTime {
            year: 2000,
            month: 1,
            day: 1,
            hour: 12,
            minute: 0,
            second: 0,
        }
        .to_instant(calendar);
        return (t.seconds - j2000.seconds) as f64 / 86_400.0;
    }
    let (days, year_len) = calendar.year_position(t);
    let year = DateTime::from_instant(t, calendar).year;
    ((year - 2000) as f64 + days / year_len) * TROPICAL_YEAR - 0.5
}

/// The sub-steps of the TOA integral: midpoints at most ten minutes apart.
fn toa_midpoints(end: Instant, seconds: i64) -> Vec<Instant> {
    let n = (seconds.max(1) + 599) / 600;
    (0..n)
        .map(|k| Instant {
            seconds: end.seconds - seconds + ((2 * k + 1) * seconds) / (2 * n),
        })
        .collect()
}

/// Computes the forcing features of many nodes at one time.
pub struct ForcingCalculator {
    forcings: Vec<Forcing>,
    calendar: Calendar,
    /// The model step in seconds: the TOA radiation is averaged over it.
    step_seconds: i64,
}

impl ForcingCalculator {
    pub fn new(forcings: &[Forcing], calendar: Calendar, step_seconds: i64) -> ForcingCalculator {
        ForcingCalculator {
            forcings: forcings.to_vec(),
            calendar,
            step_seconds,
        }
    }

    pub fn width(&self) -> usize {
        width(&self.forcings)
    }

    /// What every node's forcings at `t` share: the sun now and over the step.
    pub fn at(&self, t: Instant) -> ForcingsAt<'_> {
        let toa_suns = match self.forcings.contains(&Forcing::ToaRadiation) {
            true => toa_midpoints(t, self.step_seconds)
                .into_iter()
                .map(|m| Sun::at(m, self.calendar))
                .collect(),
            false => Vec::new(),
        };
        let (days, year_len) = self.calendar.year_position(t);
        ForcingsAt {
            forcings: &self.forcings,
            sun: Sun::at(t, self.calendar),
            toa_suns,
            year_angle: 2.0 * std::f64::consts::PI * days / year_len,
            utc_hours: days.fract() * 24.0,
        }
    }
}

/// The forcings at one time, node by node.
pub struct ForcingsAt<'a> {
    forcings: &'a [Forcing],
    sun: Sun,
    /// The sun at the midpoints of the TOA integral.
    toa_suns: Vec<Sun>,
    year_angle: f64,
    utc_hours: f64,
}

impl ForcingsAt<'_> {
    /// Writes the features of the node at `place` into `out` (`width` values).
    pub fn fill_node(&self, place: &NodePlace, out: &mut [f32]) {
        let mut at = 0;
        for f in self.forcings {
            let values: [f64; 2] = match f {
                Forcing::CosZenith => [self.sun.cos_zenith(place), 0.0],
                Forcing::ToaRadiation => {
                    let sum: f64 = self.toa_suns.iter().map(|s| s.toa(place)).sum();
                    [sum / self.toa_suns.len() as f64 / SOLAR_CONSTANT, 0.0]
                }
                Forcing::LocalTime => {
                    let local = (self.utc_hours + place.lon / 15.0) / 24.0;
                    let (s, c) = (2.0 * std::f64::consts::PI * local).sin_cos();
                    [s, c]
                }
                Forcing::YearProgress => {
                    let (s, c) = self.year_angle.sin_cos();
                    [s, c]
                }
            };
            for v in &values[..f.width()] {
                out[at] = *v as f32;
                at += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instant(text: &str) -> Instant {
        DateTime::parse(text, Calendar::ProlepticGregorian)
            .unwrap()
            .to_instant(Calendar::ProlepticGregorian)
    }

    /// Zenith angles (degrees) from NREL's SPA, `pvlib.solarposition.get_solarposition(
    /// time, lat, lon, altitude=0, method="nrel_numpy")["zenith"]` (geometric, no
    /// refraction), pvlib 0.16.1; produced by tests/solar_reference.py.
    const SPA_ZENITH: &[(&str, f64, f64, f64)] = &[
        ("1996-01-05 00:00", 0.0, 0.0, 157.2591),
        ("1996-01-05 00:00", 51.5, -0.1, 151.1930),
        ("1996-01-05 00:00", -33.9, 151.2, 28.5750),
        ("1996-01-05 00:00", 64.1, -21.9, 135.8779),
        ("1996-01-05 00:00", 19.4, -99.1, 88.4092),
        ("1996-01-05 00:00", -77.8, 166.7, 55.5263),
        ("2000-03-20 12:00", 0.0, 0.0, 1.8460),
        ("2000-03-20 12:00", 51.5, -0.1, 51.4555),
        ("2000-03-20 12:00", -33.9, 151.2, 135.6290),
        ("2000-03-20 12:00", 64.1, -21.9, 66.3636),
        ("2000-03-20 12:00", 19.4, -99.1, 100.2939),
        ("2000-03-20 12:00", -77.8, 166.7, 101.8451),
        ("2016-06-21 06:00", 0.0, 0.0, 90.4190),
        ("2016-06-21 06:00", 51.5, -0.1, 72.2009),
        ("2016-06-21 06:00", -33.9, 151.2, 81.3556),
        ("2016-06-21 06:00", 64.1, -21.9, 78.1538),
        ("2016-06-21 06:00", 19.4, -99.1, 136.1652),
        ("2016-06-21 06:00", -77.8, 166.7, 110.0386),
        ("2023-09-23 18:00", 0.0, 0.0, 91.9100),
        ("2023-09-23 18:00", 51.5, -0.1, 91.2693),
        ("2023-09-23 18:00", -33.9, 151.2, 111.9440),
        ("2023-09-23 18:00", 64.1, -21.9, 81.5785),
        ("2023-09-23 18:00", 19.4, -99.1, 20.8137),
        ("2023-09-23 18:00", -77.8, 166.7, 92.2176),
        ("2025-12-21 15:00", 0.0, 0.0, 49.9276),
        ("2025-12-21 15:00", 51.5, -0.1, 84.8284),
        ("2025-12-21 15:00", -33.9, 151.2, 120.5191),
        ("2025-12-21 15:00", 64.1, -21.9, 89.4521),
        ("2025-12-21 15:00", 19.4, -99.1, 67.6269),
        ("2025-12-21 15:00", -77.8, 166.7, 77.0231),
    ];

    #[test]
    fn zenith_angles_match_nrel_spa_within_a_hundredth_of_a_degree() {
        assert!(!SPA_ZENITH.is_empty());
        for &(time, lat, lon, zenith) in SPA_ZENITH {
            let ours = Sun::at(instant(time), Calendar::ProlepticGregorian)
                .cos_zenith(&NodePlace::new(lat, lon))
                .clamp(-1.0, 1.0)
                .acos()
                .to_degrees();
            assert!(
                (ours - zenith).abs() < 0.01,
                "{time} at ({lat}, {lon}): {ours} deg, SPA says {zenith}"
            );
        }
    }

    /// TOA radiation means (W m-2) over the hour or six hours ending at the time, from
    /// pvlib's Spencer extraterrestrial radiation times SPA's cos zenith, averaged over
    /// 721 instants; produced by tests/solar_reference.py.
    const SPA_TOA: &[(&str, i64, f64, f64, f64)] = &[
        ("1996-01-05 00:00", 3600, 0.0, 0.0, 0.000),
        ("1996-01-05 00:00", 3600, 51.5, -0.1, 0.000),
        ("1996-01-05 00:00", 3600, -33.9, 151.2, 1156.282),
        ("1996-01-05 00:00", 3600, 64.1, -21.9, 0.000),
        ("1996-01-05 00:00", 21600, 0.0, 0.0, 0.201),
        ("1996-01-05 00:00", 21600, 51.5, -0.1, 0.000),
        ("1996-01-05 00:00", 21600, -33.9, 151.2, 572.786),
        ("1996-01-05 00:00", 21600, 64.1, -21.9, 0.000),
        ("2000-03-20 12:00", 3600, 0.0, 0.0, 1349.666),
        ("2000-03-20 12:00", 3600, 51.5, -0.1, 841.117),
        ("2000-03-20 12:00", 3600, -33.9, 151.2, 0.000),
        ("2000-03-20 12:00", 3600, 64.1, -21.9, 512.142),
        ("2000-03-20 12:00", 21600, 0.0, 0.0, 844.751),
        ("2000-03-20 12:00", 21600, 51.5, -0.1, 525.342),
        ("2000-03-20 12:00", 21600, -33.9, 151.2, 101.611),
        ("2000-03-20 12:00", 21600, 64.1, -21.9, 228.411),
        ("2016-06-21 06:00", 3600, 0.0, 0.0, 0.000),
        ("2016-06-21 06:00", 3600, 51.5, -0.1, 304.667),
        ("2016-06-21 06:00", 3600, -33.9, 151.2, 306.129),
        ("2016-06-21 06:00", 3600, 64.1, -21.9, 209.048),
        ("2016-06-21 06:00", 21600, 0.0, 0.0, 0.000),
        ("2016-06-21 06:00", 21600, 51.5, -0.1, 70.687),
        ("2016-06-21 06:00", 21600, -33.9, 151.2, 576.454),
        ("2016-06-21 06:00", 21600, 64.1, -21.9, 54.645),
    ];

    #[test]
    fn toa_means_match_an_independent_integral_within_a_thousandth_of_the_solar_constant() {
        assert!(!SPA_TOA.is_empty());
        for &(time, seconds, lat, lon, toa) in SPA_TOA {
            let calc = ForcingCalculator::new(
                &[Forcing::ToaRadiation],
                Calendar::ProlepticGregorian,
                seconds,
            );
            let mut out = [0f32];
            calc.at(instant(time))
                .fill_node(&NodePlace::new(lat, lon), &mut out);
            let ours = out[0] as f64 * SOLAR_CONSTANT;
            assert!(
                (ours - toa).abs() <= 0.001 * SOLAR_CONSTANT,
                "{time} ({seconds} s) at ({lat}, {lon}): {ours} W m-2, reference {toa}"
            );
        }
    }

    #[test]
    fn local_time_and_year_progress_are_angles_of_the_day_and_year() {
        let calc = ForcingCalculator::new(
            &[Forcing::LocalTime, Forcing::YearProgress],
            Calendar::Day360,
            21_600,
        );
        let t = DateTime::parse("2001-04-01 06:00", Calendar::Day360)
            .unwrap()
            .to_instant(Calendar::Day360);
        let mut out = [0f32; 4];
        // 06 UTC at 90 E is local noon; 1 April in a 360-day year is a quarter in (+0.25 d).
        calc.at(t).fill_node(&NodePlace::new(10.0, 90.0), &mut out);
        let year = 2.0 * std::f64::consts::PI * (90.25 / 360.0);
        let want = [0.0, -1.0, year.sin() as f32, year.cos() as f32];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?} != {want:?}");
        }
    }

    #[test]
    fn lists_parse_with_all_none_and_refuse_unknown_names() {
        assert_eq!(Forcing::parse_list("none").unwrap(), vec![]);
        assert_eq!(Forcing::parse_list("all").unwrap(), Forcing::ALL.to_vec());
        assert_eq!(
            Forcing::parse_list("local_time, cos_zenith,local_time").unwrap(),
            vec![Forcing::LocalTime, Forcing::CosZenith]
        );
        let e = Forcing::parse_list("cos_zenit").unwrap_err();
        assert!(e.contains("unknown forcing 'cos_zenit'"), "{e}");
        assert_eq!(width(&Forcing::ALL), 6);
    }
}
