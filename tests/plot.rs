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
