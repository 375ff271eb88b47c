//! `meshcast plot`: pictures of a run's training curves, eval scores, forecast maps and
//! benchmark reports, as PNG or SVG (by the output's extension), drawn with plotters and
//! an embedded font (DejaVu Sans, assets/fonts) so nothing is needed from the system.

mod benchmark;
mod forecast;
mod map;
mod scores;
mod training;

use std::path::Path;

use plotters::coord::cartesian::Cartesian2d;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

pub use benchmark::plot_benchmark;
pub use forecast::{plot_forecast, ForecastPick};
pub use scores::{plot_score_reports, plot_scores};
pub use training::plot_training;

/// The font family every picture uses, registered once from the embedded file.
const FONT: &str = "sans-serif";

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = REGISTERED.get_or_init(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
    });
    anyhow::ensure!(*ok, "the embedded font could not be loaded");
    Ok(())
}

/// A picture that can be drawn on any plotters backend.
trait Picture {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static;
}

/// Draws `picture` and writes it to `out` (PNG, or SVG for a `.svg` name) through a
/// temporary file, so a failed plot leaves nothing behind.
fn render(out: &Path, picture: &impl Picture) -> anyhow::Result<()> {
    register_font()?;
    crate::util::check_output_path(out)?;
    let (width, height) = picture.size();
    let svg = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let bytes = if svg {
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, (width, height)).into_drawing_area();
            root.fill(&WHITE)?;
            picture.draw(&root)?;
            root.present()?;
        }
        text.into_bytes()
    } else {
        let mut pixels = vec![0u8; (width * height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
            root.fill(&WHITE)?;
            picture.draw(&root)?;
            root.present()?;
        }
        png_bytes(&pixels, width, height)?
    };
    crate::util::write_atomic(out, &bytes)?;
    Ok(())
}

/// RGB pixels encoded as PNG.
fn png_bytes(pixels: &[u8], width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let encoder =
        PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::Adaptive);
    image::ImageEncoder::write_image(
        encoder,
        pixels,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

/// A chart with f64 axes, as the line plots draw.
type LineChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws `points` as a 2 px line of colour `c` with a legend entry `label`, and a dot
/// of radius `dots` on each point (none for 0).
fn labelled_line<'a, DB: DrawingBackend + 'a>(
    chart: &mut LineChart<'a, DB>,
    points: &[(f64, f64)],
    c: RGBColor,
    label: &str,
    dots: u32,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    if dots > 0 {
        chart.draw_series(points.iter().map(|&p| Circle::new(p, dots, c.filled())))?;
    }
    Ok(())
}

/// The legend of a line chart: its labels in a framed, lightly opaque box.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut LineChart<'a, DB>,
    font: u32,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .label_font((FONT, font))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

/// The colour of series `i`: plotters' palette, which stays readable in print.
fn colour(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// `(min, max)` of finite values with a margin, never an empty range.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs().max(1e-12) * 1e-3);
    (lo - pad, hi + pad)
}
