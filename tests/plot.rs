//! `meshcast plot`: each picture is a valid PNG (or SVG) of the expected size with
//! drawing in its plot area; a blank picture fails, and bad input is one error line.

mod common;

use std::path::Path;

use common::*;

/// Share of pixels in the central part of the picture (the plot areas, not the margins)
/// that are neither white nor near-white: lines, points, grid and labels.
fn ink(png: &Path, (width, height): (u32, u32)) -> f64 {
    let image = image::open(png).unwrap().to_rgb8();
    assert_eq!(image.dimensions(), (width, height), "{}", png.display());
    let (x0, x1, y0, y1) = (width / 10, width * 9 / 10, height / 10, height * 9 / 10);
    let mut dark = 0usize;
    for y in y0..y1 {
        for x in x0..x1 {
            let p = image.get_pixel(x, y);
            dark += usize::from(p.0.iter().any(|&c| c < 200));
        }
    }
    dark as f64 / ((x1 - x0) * (y1 - y0)) as f64
}

fn plot(args: &[&str]) -> std::process::Output {
    meshcast()
        .arg("-q")
        .arg("plot")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn training_and_scores_pictures_have_their_size_and_are_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = small_run(dir.path());
    let run_arg = run.to_str().unwrap();
    succeeded(&plot(&["training", run_arg]));
    let training = run.join("training.png");
    let share = ink(&training, (1000, 700));
    assert!(
        share > 0.01 && share < 0.6,
        "training.png: {share} of the plot area inked"
    );

    let report = eval_last(&run, &["--split", "all"]);
    let eval = dir.path().join("eval.json");
    std::fs::write(&eval, report.to_string()).unwrap();
    let scores = dir.path().join("scores.png");
    let o = plot(&[
        "scores",
        eval.to_str().unwrap(),
        "-o",
        scores.to_str().unwrap(),
    ]);
    succeeded(&o);
    // Five channels of the synthetic data: a row of RMSE and ACC panels each.
    let share = ink(&scores, (1000, 5 * 280));
    assert!(
        share > 0.01 && share < 0.6,
        "scores.png: {share} of the plot area inked"
    );

    let svg = dir.path().join("scores.svg");
    succeeded(&plot(&[
        "scores",
        eval.to_str().unwrap(),
        "-o",
        svg.to_str().unwrap(),
    ]));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("<polyline") && text.contains("RMSE"));
}

#[test]
fn a_blank_picture_is_caught_by_the_ink_check() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(200, 100, image::Rgb([255, 255, 255]))
        .save(&blank)
        .unwrap();
    assert_eq!(ink(&blank, (200, 100)), 0.0);
}

#[test]
fn bad_plot_input_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-run");
    std::fs::create_dir(&empty).unwrap();
    assert_bad_input(
        &plot(&["training", empty.to_str().unwrap()]),
        &["metrics.jsonl", "cannot read"],
    );
    let not_eval = dir.path().join("x.json");
    std::fs::write(&not_eval, "{\"a\": 1}").unwrap();
    assert_bad_input(
        &plot(&["scores", not_eval.to_str().unwrap()]),
        &["x.json", "no score records"],
    );
}

/// The first number after `key` in `text`.
fn number_after(text: &str, key: &str) -> f64 {
    let at = text.find(key).unwrap_or_else(|| panic!("no '{key}'")) + key.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    digits.parse().unwrap()
}

#[test]
fn forecast_maps_are_drawn_and_show_the_error_eval_scores() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = small_run(dir.path());
    // Exactly one forecast lies in this period: the one from 2000-01-03 06:00.
    let period = ["--start", "2000-01-03 00:00", "--end", "2000-01-03 18:00"];
    let report = eval_last(&run, &[&["--split", "all"], &period[..]].concat());
    assert_eq!(
        report["initial_times"],
        serde_json::json!(["2000-01-03 06:00"])
    );
    let want = score_record(
        &report,
        &[
            ("channel", "t2m".into()),
            ("system", "model".into()),
            ("metric", "rmse".into()),
            ("lead_hours", 12.0.into()),
        ],
    )
    .expect("a t2m RMSE at 12 h")["value"]
        .as_f64()
        .unwrap();
    let fc = dir.path().join("fc.nc");
    forecast_last(
        &run,
        &fc,
        &["--init-times", "2000-01-03 06:00", "--steps", "2"],
    );
    let map = |out: &Path| {
        plot(&[
            "forecast",
            fc.to_str().unwrap(),
            "--truth",
            data.to_str().unwrap(),
            "--variable",
            "t2m",
            "--lead",
            "12",
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let svg = dir.path().join("map.svg");
    succeeded(&map(&svg));
    let text = std::fs::read_to_string(&svg).unwrap();
    // The error panel's RMSE, from the forecast file and the data file on their
    // coordinates, is eval's (six significant digits).
    let drawn = number_after(&text, "RMSE ");
    assert!(
        (drawn - want).abs() <= 1e-5 * want,
        "map RMSE {drawn}, eval {want}"
    );
    assert!(text.contains("truth at 2000-01-03 18:00"));
    // Each colour bar is labelled with the units.
    let units = text
        .split("</text>")
        .filter(|t| t.rsplit('>').next().map(str::trim) == Some("K"))
        .count();
    assert_eq!(units, 3, "colour bars labelled K");

    // A 10-degree global grid: three maps of 760x380 with axes and colour bars.
    let png = dir.path().join("map.png");
    succeeded(&map(&png));
    let share = ink(&png, (1000, 3 * (380 + 95)));
    assert!(share > 0.3 && share < 0.95, "map.png: {share} inked");
}

#[test]
fn storm1996_maps_leave_masked_cells_blank() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_briefly(dir.path(), "run", &storm_args());
    let fc = dir.path().join("fc.nc");
    forecast_last(
        &run,
        &fc,
        &["--init-times", "1996-01-07 00:00", "--steps", "1"],
    );
    let svg = dir.path().join("map.svg");
    let truth = storm("Pstorm.cdf");
    let args = ["forecast", fc.to_str().unwrap(), "--truth", &truth];
    succeeded(&plot(
        &[&args[..], &["--variable", "p", "-o", svg.to_str().unwrap()]].concat(),
    ));

    let valid = |values: Vec<f32>| values.iter().map(|&v| v != -9999.0).collect::<Vec<_>>();
    let f = open_nc(&fc);
    let lead: Vec<i64> = f
        .variable("prediction_timedelta")
        .unwrap()
        .get_values(..)
        .unwrap();
    assert_eq!(lead, [6]);
    let forecast = valid(f.variable("p").unwrap().get_values(..).unwrap());
    // Valid at 1996-01-07 06:00: step 9 of the 6-hourly file from 1996-01-05 00:00.
    let input = open_nc(Path::new(&truth));
    let truth = valid(
        input
            .variable("p")
            .unwrap()
            .get_values(([9, 0, 0], [1, 33, 36]))
            .unwrap(),
    );
    let both = forecast
        .iter()
        .zip(&truth)
        .filter(|(a, b)| **a && **b)
        .count();
    let count = |m: &[bool]| m.iter().filter(|&&v| v).count();
    assert!(
        count(&forecast) < 33 * 36,
        "the storm grid has masked cells"
    );
    // One rectangle per valid cell of each map, 128 per colour bar, one background.
    let rects = std::fs::read_to_string(&svg)
        .unwrap()
        .matches("<rect")
        .count();
    assert_eq!(rects, 1 + count(&forecast) + count(&truth) + both + 3 * 128);
}

#[test]
fn benchmark_pictures_have_a_row_per_case_and_are_drawn() {
    let reports = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench-reports");
    let gpu = reports.join("gpu-formats-5_20261124T143452Z.json");
    let cpu = reports.join("meshcast-bar5_20261124T174510Z.json");
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.png");
    succeeded(&plot(&[
        "benchmark",
        gpu.to_str().unwrap(),
        "-o",
        one.to_str().unwrap(),
    ]));
    // 12 cases, one bar each.
    let share = ink(&one, (1200, 120 + 12 * 32));
    assert!(share > 0.05 && share < 0.7, "one.png: {share} inked");
    let two = dir.path().join("two.png");
    let args = [gpu.to_str().unwrap(), cpu.to_str().unwrap()];
    succeeded(&plot(
        &[&["benchmark"], &args[..], &["-o", two.to_str().unwrap()]].concat(),
    ));
    // 13 cases (the CPU one is another case: its device differs), two bars each.
    let share = ink(&two, (1200, 120 + 13 * 46));
    assert!(share > 0.05 && share < 0.7, "two.png: {share} inked");
}

#[test]
fn bad_forecast_or_benchmark_input_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = small_run(dir.path());
    let fc = dir.path().join("fc.nc");
    forecast_last(
        &run,
        &fc,
        &["--init-times", "2000-01-03 06:00", "--steps", "2"],
    );
    let (fc, data) = (fc.to_str().unwrap(), data.to_str().unwrap());
    let base = ["forecast", fc, "--truth", data, "--variable"];
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["t2m", "--lead", "7"],
            &["fc.nc", "no lead of 7 h", "6, 12"],
        ),
        (&["t2m", "--level", "500"], &["fc.nc", "no level dimension"]),
        (&["nope"], &["fc.nc", "no variable 'nope'"]),
        (
            &["t2m", "--init-time", "2001-01-01 00:00"],
            &["no initialisation"],
        ),
        (
            &["t2m", "--truth-variable", "q"],
            &["g.nc", "no file has 'q'"],
        ),
    ];
    for (extra, needles) in cases {
        assert_bad_input(&plot(&[&base[..], extra].concat()), needles);
    }
    let not_forecast = ["forecast", data, "--truth", data, "--variable", "t2m"];
    assert_bad_input(&plot(&not_forecast), &["g.nc", "not a meshcast forecast"]);
    assert_bad_input(&plot(&["benchmark", fc]), &["fc.nc"]);
}

#[test]
fn plots_flags_draw_into_the_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "g.nc", &["--resolution", "10", "--steps", "24"]);
    let run = dir.path().join("run");
    succeeded(&train_tiny(&data, &run, &["--num-epochs", "1", "--plots"]));
    let share = ink(&run.join("training.png"), (1000, 700));
    assert!(share > 0.01, "training.png: {share} inked");
    eval_last(&run, &["--split", "all", "--plots"]);
    let share = ink(&run.join("scores-all.png"), (1000, 5 * 280));
    assert!(share > 0.01, "scores-all.png: {share} inked");
}
