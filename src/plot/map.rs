//! Maps of a forecast, its truth and their difference on the grid's own latitude and
//! longitude axes: each cell a rectangle between the midpoints of its neighbours,
//! masked cells left blank, a regional grid drawn on its own box (a region across the
//! file's longitude seam drawn in one piece), and a colour bar with the units.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Picture, FONT};

/// The forecast and truth of one field on the same points, `[lat][lon]` in file order,
/// with the three panels' titles.
#[derive(Debug)]
pub struct MapField {
    titles: [String; 3],
    forecast: Vec<f64>,
    truth: Vec<f64>,
}

impl MapField {
    pub fn new(titles: [String; 3], forecast: Vec<f64>, truth: Vec<f64>) -> MapField {
        MapField {
            titles,
            forecast,
            truth,
        }
    }
}

/// One axis in drawing order: file indices, and each cell's edges.
#[derive(Debug, PartialEq)]
struct DisplayAxis {
    order: Vec<usize>,
    /// `order.len() + 1` increasing edges.
    edges: Vec<f64>,
}

/// Three maps of one field: forecast, truth, forecast − truth.
#[derive(Debug)]
pub struct Maps {
    lat_values: Vec<f64>,
    lat: DisplayAxis,
    lon: DisplayAxis,
    field: MapField,
    error: Vec<f64>,
    units: Option<String>,
}

impl Maps {
    pub fn new(lat: Vec<f64>, lon: Vec<f64>, field: MapField, units: Option<String>) -> Maps {
        let error = field
            .forecast
            .iter()
            .zip(&field.truth)
            .map(|(f, t)| f - t)
            .collect();
        Maps {
            lat: latitude_axis(&lat),
            lon: longitude_axis(&lon),
            lat_values: lat,
            field,
            error,
            units,
        }
    }

    /// Latitude-weighted (cos φ) RMSE and bias of forecast − truth over the cells both
    /// have, as eval computes them for one initialisation.
    pub fn error_scores(&self) -> (f64, f64) {
        let nlon = self.lon.order.len();
        let (mut w_sum, mut sq, mut sum) = (0.0, 0.0, 0.0);
        for (c, e) in self.error.iter().enumerate() {
            if e.is_finite() {
                let w = self.lat_values[c / nlon].to_radians().cos().max(0.0);
                w_sum += w;
                sq += w * e * e;
                sum += w * e;
            }
        }
        ((sq / w_sum).sqrt(), sum / w_sum)
    }

    /// `RMSE … units, bias …, latitude-weighted over N cells`.
    pub fn error_summary(&self) -> String {
        let (rmse, bias) = self.error_scores();
        let cells = self.error.iter().filter(|e| e.is_finite()).count();
        let units = self
            .units
            .as_deref()
            .map_or(String::new(), |u| format!(" {u}"));
        format!(
            "RMSE {}{units}, bias {}{units} (latitude-weighted, {cells} cells)",
            significant(rmse),
            significant(bias)
        )
    }

    /// Height in pixels of one map's plotting area: the grid's lat/lon aspect.
    fn map_height(&self) -> u32 {
        let span = |a: &DisplayAxis| a.edges[a.edges.len() - 1] - a.edges[0];
        let aspect = span(&self.lat) / span(&self.lon);
        (MAP_WIDTH as f64 * aspect).clamp(180.0, 640.0) as u32
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        title: &str,
        values: &[f64],
        scale: &Scale,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (map_area, bar_area) = area.split_horizontally(area.dim_in_pixel().0 - BAR_WIDTH);
        let (x, y) = (&self.lon.edges, &self.lat.edges);
        let mut chart = ChartBuilder::on(&map_area)
            .caption(title, (FONT, 17))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x[0]..x[x.len() - 1], y[0]..y[y.len() - 1])?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("longitude (°)")
            .y_desc("latitude (°)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 13))
            .draw()?;
        let nlon = self.lon.order.len();
        let cells = self.lat.order.iter().enumerate().flat_map(|(a, &i)| {
            self.lon
                .order
                .iter()
                .enumerate()
                .filter_map(move |(b, &j)| {
                    let v = values[i * nlon + j];
                    v.is_finite().then(|| {
                        let corners = [(x[b], y[a]), (x[b + 1], y[a + 1])];
                        Rectangle::new(corners, scale.colour(v).filled())
                    })
                })
        });
        chart.draw_series(cells)?;
        scale.draw_bar(&bar_area, self.units.as_deref())
    }
}

/// Width of the map's plotting area and of the colour bar beside it, in pixels.
const MAP_WIDTH: u32 = 760;
const BAR_WIDTH: u32 = 150;

impl Picture for Maps {
    fn size(&self) -> (u32, u32) {
        (MAP_WIDTH + 90 + BAR_WIDTH, 3 * (self.map_height() + 95))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let panels = root.split_evenly((3, 1));
        let both = self.field.forecast.iter().chain(&self.field.truth);
        let field_scale = Scale::sequential(both.copied());
        let error_scale = Scale::diverging(self.error.iter().copied());
        let titles = &self.field.titles;
        self.draw_panel(&panels[0], &titles[0], &self.field.forecast, &field_scale)?;
        self.draw_panel(&panels[1], &titles[1], &self.field.truth, &field_scale)?;
        let error_title = format!("{}: {}", titles[2], self.error_summary());
        self.draw_panel(&panels[2], &error_title, &self.error, &error_scale)
    }
}

/// A colour scale: value range and colour map.
struct Scale {
    lo: f64,
    hi: f64,
    /// Colour map anchors, evenly spaced from `lo` to `hi`.
    anchors: &'static [(u8, u8, u8)],
}

/// Viridis (matplotlib's default), sampled at nine points.
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];

/// Blue-white-red (ColorBrewer RdBu reversed), for differences around zero.
const DIVERGING: [(u8, u8, u8); 5] = [
    (33, 102, 172),
    (103, 169, 207),
    (247, 247, 247),
    (239, 138, 98),
    (178, 24, 43),
];

impl Scale {
    fn sequential(values: impl Iterator<Item = f64>) -> Scale {
        let (lo, hi) = finite_range(values);
        let (lo, hi) = if lo < hi {
            (lo, hi)
        } else {
            (lo - 1.0, hi + 1.0)
        };
        Scale {
            lo,
            hi,
            anchors: &VIRIDIS,
        }
    }

    /// Symmetric around zero, so white means no error.
    fn diverging(values: impl Iterator<Item = f64>) -> Scale {
        let (lo, hi) = finite_range(values);
        let m = lo.abs().max(hi.abs());
        let m = if m > 0.0 { m } else { 1.0 };
        Scale {
            lo: -m,
            hi: m,
            anchors: &DIVERGING,
        }
    }

    fn colour(&self, v: f64) -> RGBColor {
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        let x = t * (self.anchors.len() - 1) as f64;
        let k = (x.floor() as usize).min(self.anchors.len() - 2);
        let f = x - k as f64;
        let (a, b) = (self.anchors[k], self.anchors[k + 1]);
        let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
        RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }

    fn draw_bar<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        units: Option<&str>,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let mut chart = ChartBuilder::on(area)
            .caption(units.unwrap_or(""), (FONT, 15))
            .margin_top(12)
            .margin_bottom(50)
            .margin_left(10)
            .set_label_area_size(LabelAreaPosition::Right, 80)
            .build_cartesian_2d(0.0..1.0, self.lo..self.hi)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .label_style((FONT, 12))
            .y_label_formatter(&|v| format!("{}", (v * 1e6).round() / 1e6))
            .draw()?;
        let steps = 128;
        let height = (self.hi - self.lo) / steps as f64;
        chart.draw_series((0..steps).map(|s| {
            let y = self.lo + s as f64 * height;
            let colour = self.colour(y + height / 2.0);
            Rectangle::new([(0.0, y), (1.0, y + height)], colour.filled())
        }))?;
        Ok(())
    }
}

/// `(min, max)` of the finite values; `(0, 0)` when there are none.
fn finite_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.0, 0.0)
    }
}

/// Six significant digits, without an exponent for ordinary magnitudes.
fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-4..9).contains(&magnitude) {
        return format!("{v:.5e}");
    }
    format!("{v:.*}", (5 - magnitude).max(0) as usize)
}

/// Latitudes ascending; the outer edges half a spacing out, within ±90.
fn latitude_axis(lat: &[f64]) -> DisplayAxis {
    let mut order: Vec<usize> = (0..lat.len()).collect();
    order.sort_by(|&a, &b| lat[a].total_cmp(&lat[b]));
    let centres: Vec<f64> = order.iter().map(|&i| lat[i]).collect();
    let mut edges = edges(&centres);
    let last = edges.len() - 1;
    edges[0] = edges[0].max(-90.0);
    edges[last] = edges[last].min(90.0);
    DisplayAxis { order, edges }
}

/// Longitudes ascending as the file writes them, except a region that crosses the
/// file's seam (0° for 0..360, 180° for -180..180), which is unwrapped into one run
/// (0..30 and 330..360 become -30..30).
fn longitude_axis(lon: &[f64]) -> DisplayAxis {
    let mut order: Vec<usize> = (0..lon.len()).collect();
    order.sort_by(|&a, &b| lon[a].total_cmp(&lon[b]));
    let mut centres: Vec<f64> = order.iter().map(|&i| lon[i]).collect();
    let n = centres.len();
    if n > 1 {
        let (gap_at, gap) = (0..n - 1)
            .map(|k| (k, centres[k + 1] - centres[k]))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("two or more longitudes");
        let wrap = centres[0] + 360.0 - centres[n - 1];
        if gap > wrap {
            order.rotate_left(gap_at + 1);
            centres.rotate_left(gap_at + 1);
            for c in &mut centres[n - gap_at - 1..] {
                *c += 360.0;
            }
            if centres[0] >= 180.0 {
                centres.iter_mut().for_each(|c| *c -= 360.0);
            }
        }
    }
    DisplayAxis {
        order,
        edges: edges(&centres),
    }
}

/// Cell edges of increasing centres: midpoints, and half a spacing beyond the ends (one
/// degree for a single centre).
fn edges(centres: &[f64]) -> Vec<f64> {
    let n = centres.len();
    if n == 1 {
        return vec![centres[0] - 0.5, centres[0] + 0.5];
    }
    let mut out = Vec::with_capacity(n + 1);
    out.push(centres[0] - (centres[1] - centres[0]) / 2.0);
    out.extend(centres.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    out.push(centres[n - 1] + (centres[n - 1] - centres[n - 2]) / 2.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_across_the_seam_is_unwrapped_into_one_run() {
        // The file's order: 0, 10, 20, 330, 340, 350 (a region from 330° to 20°).
        let axis = longitude_axis(&[0.0, 10.0, 20.0, 330.0, 340.0, 350.0]);
        assert_eq!(axis.order, [3, 4, 5, 0, 1, 2]);
        assert_eq!(axis.edges, [-35.0, -25.0, -15.0, -5.0, 5.0, 15.0, 25.0]);
    }

    #[test]
    fn a_global_or_plain_regional_axis_keeps_the_files_values() {
        let global: Vec<f64> = (0..72).map(|i| 2.5 + 5.0 * i as f64).collect();
        let axis = longitude_axis(&global);
        assert_eq!(axis.edges[0], 0.0);
        assert_eq!(axis.edges[72], 360.0);
        let west = longitude_axis(&[-170.0, -175.0, -165.0]);
        assert_eq!(west.order, [1, 0, 2]);
        assert_eq!(west.edges, [-177.5, -172.5, -167.5, -162.5]);
    }

    #[test]
    fn descending_latitudes_are_drawn_ascending_within_the_poles() {
        let axis = latitude_axis(&[90.0, 45.0, 0.0, -45.0, -90.0]);
        assert_eq!(axis.order, [4, 3, 2, 1, 0]);
        assert_eq!(axis.edges, [-90.0, -67.5, -22.5, 22.5, 67.5, 90.0]);
    }

    #[test]
    fn masked_cells_are_left_out_of_the_scores_and_the_scales() {
        let field = MapField::new(
            Default::default(),
            vec![1.0, f64::NAN, 3.0, 4.0],
            vec![0.0, 2.0, f64::NAN, 2.0],
        );
        let maps = Maps::new(vec![0.0, 60.0], vec![0.0, 10.0], field, None);
        let (rmse, bias) = maps.error_scores();
        // Cells (0°, 1 K) weight 1 and (60°, 2 K) weight 0.5.
        assert!((rmse - ((1.0 + 0.5 * 4.0) / 1.5f64).sqrt()).abs() < 1e-12);
        assert!((bias - (1.0 + 0.5 * 2.0) / 1.5).abs() < 1e-12);
        let scale = Scale::diverging(maps.error.iter().copied());
        assert_eq!((scale.lo, scale.hi), (-2.0, 2.0));
        assert_eq!(scale.colour(0.0), RGBColor(247, 247, 247));
    }
}
