//! Batches, normalisation and the prefetching loader, through the library API on
//! generated files (with masked corners, like real regional data).

#![allow(clippy::single_range_in_vec_init)] // a split of one range reads best as vec![a..b]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use meshcast::data::{
    BatchLoader, DataSpec, Dataset, NormStats, Prefetch, Split, SplitPeriods, SplitSpec, Splits,
    StepReader, WindowSpec,
};

fn regional(dir: &std::path::Path) -> PathBuf {
    generate(
        dir,
        "r.nc",
        &[
            "--resolution",
            "2.5",
            "--region",
            "20,60,-140,-50",
            "--fill-corners",
            "0.2",
            "--steps",
            "40",
        ],
    )
}

fn setup(path: PathBuf, window: WindowSpec) -> (Arc<Dataset>, Splits, Arc<NormStats>) {
    let ds = Arc::new(
        Dataset::open(&DataSpec {
            files: vec![path],
            ..Default::default()
        })
        .unwrap(),
    );
    let splits = Splits::new(&ds.time, &SplitSpec::default(), window).unwrap();
    let stats = Arc::new(NormStats::compute(&ds, &splits).unwrap());
    (ds, splits, stats)
}

#[test]
fn statistics_come_from_the_training_block_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, splits, stats) = setup(regional(dir.path()), WindowSpec::lead_spaced(2, 1));
    assert_eq!(splits.train, vec![0..28]);
    // Recompute the mean of channel 0 by hand over the training steps' valid cells.
    let mut reader = StepReader::default();
    let cells = ds.grid.len();
    let (mut sum, mut n) = (0.0f64, 0usize);
    for t in splits.steps(Split::Train) {
        let s = reader.read(&ds, t).unwrap();
        for k in 0..cells {
            if s.valid[k] {
                sum += s.values[k] as f64;
                n += 1;
            }
        }
    }
    assert!((stats.mean[0] - sum / n as f64).abs() < 1e-6 * stats.std[0]);
    // Over all steps the mean differs: the split matters.
    let all = Splits::new(
        &ds.time,
        &SplitSpec {
            train: 1.0,
            validation: 0.0,
            periods: None,
        },
        splits.window,
    )
    .unwrap();
    let all_stats = NormStats::compute(&ds, &all).unwrap();
    assert_ne!(all_stats.mean[0], stats.mean[0]);
    // Saved and loaded back identically, and reused for the same data.
    let path = dir.path().join("stats.json");
    stats.save(&path).unwrap();
    assert_eq!(
        NormStats::load_or_compute(&path, &ds, &splits).unwrap(),
        *stats
    );
}

#[test]
fn batches_are_normalised_and_masked_never_nan() {
    let dir = tempfile::tempdir().unwrap();
    let window = WindowSpec::lead_spaced(2, 2);
    let (ds, splits, stats) = setup(regional(dir.path()), window);
    let order = splits.samples(Split::Train);
    let loader =
        BatchLoader::new(ds.clone(), stats, (window, 1), &order, 4, Prefetch::Off).unwrap();
    let (mut masked, mut total) = (0usize, 0usize);
    let mut sum_sq = 0.0f64;
    for batch in loader {
        let b = batch.unwrap();
        assert_eq!(
            b.inputs.len(),
            b.len() * ds.grid.len() * 2 * ds.num_channels()
        );
        for (x, ok) in b.inputs.iter().zip(&b.input_valid) {
            assert!(x.is_finite());
            total += 1;
            if *ok {
                sum_sq += (*x as f64).powi(2);
            } else {
                masked += 1;
                assert_eq!(*x, 0.0);
            }
        }
        for (y, ok) in b.targets.iter().zip(&b.target_valid) {
            assert!(y.is_finite() && (*ok || *y == 0.0));
        }
    }
    let frac = masked as f64 / total as f64;
    assert!((0.1..0.35).contains(&frac), "masked fraction {frac}");
    let rms = (sum_sq / (total - masked) as f64).sqrt();
    assert!(
        (0.5..1.5).contains(&rms),
        "normalised inputs have rms {rms}"
    );
}

#[test]
fn prefetch_gives_the_same_batches_as_in_line_reading() {
    let dir = tempfile::tempdir().unwrap();
    let window = WindowSpec::lead_spaced(3, 1);
    let (ds, splits, stats) = setup(regional(dir.path()), window);
    let mut order = splits.samples(Split::Train);
    order.reverse();
    let a: Vec<_> = BatchLoader::new(
        ds.clone(),
        stats.clone(),
        (window, 1),
        &order,
        3,
        Prefetch::Off,
    )
    .unwrap()
    .map(Result::unwrap)
    .collect();
    let b: Vec<_> = BatchLoader::new(ds, stats, (window, 1), &order, 3, Prefetch::Buffer(2))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(a.len(), order.len().div_ceil(3));
    assert_eq!(a, b);
}

#[test]
fn loader_errors_reach_the_consumer_with_context_and_dropping_stops_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = regional(dir.path());
    let window = WindowSpec::lead_spaced(2, 1);
    let (ds, splits, stats) = setup(path.clone(), window);
    let order = splits.samples(Split::Train);

    // Dropping after one batch joins the background thread (a hang would fail the test run).
    let mut loader = BatchLoader::new(
        ds.clone(),
        stats.clone(),
        (window, 1),
        &order,
        2,
        Prefetch::Buffer(1),
    )
    .unwrap();
    assert!(loader.next().unwrap().is_ok());
    drop(loader);

    // The file disappears mid-run: the error names it and the samples being read.
    std::fs::write(&path, b"gone").unwrap();
    let mut loader =
        BatchLoader::new(ds, stats, (window, 1), &order, 2, Prefetch::Buffer(2)).unwrap();
    let err = loader.next().unwrap().unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("r.nc") && text.contains("loading the batch"),
        "{text}"
    );
    assert!(loader.next().is_none(), "the loader stops after an error");
}

/// A patch-parallel rank reads a band of latitude rows: the band's states and batches
/// are the whole grid's on those rows, whatever order the file stores latitudes in.
#[test]
fn a_latitude_band_reads_the_whole_grids_values_on_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let window = WindowSpec::lead_spaced(2, 1);
    let (ds, _, stats) = setup(regional(dir.path()), window);
    let (nlon, rows) = (ds.grid.nlon(), 3..9);
    let band = Arc::new(ds.latitude_band(rows.clone()));
    assert_eq!(band.grid.nlat(), rows.len());
    assert_eq!(band.grid.lat, ds.grid.lat[rows.clone()]);
    assert_band_reads_rows(&ds, &band, rows.clone());
    let cells = rows.start * nlon..rows.end * nlon;
    let batch = |data: Arc<Dataset>| {
        let order = [5, 9, 12];
        let mut loader =
            BatchLoader::new(data, stats.clone(), (window, 2), &order, 3, Prefetch::Off).unwrap();
        loader.next().unwrap().unwrap()
    };
    let (whole, part) = (batch(ds.clone()), batch(band));
    let feats = whole.input_features();
    for i in 0..3 {
        let at = |b: &meshcast::data::Batch, first: usize, n: usize| {
            (i * b.nodes + first) * n..(i * b.nodes + first + cells.len()) * n
        };
        let (w, p) = (at(&whole, cells.start, feats), at(&part, 0, feats));
        assert_eq!(part.inputs[p.clone()], whole.inputs[w.clone()]);
        assert_eq!(part.input_valid[p], whole.input_valid[w]);
        let ch = whole.channels;
        let (w, p) = (at(&whole, cells.start, ch), at(&part, 0, ch));
        assert_eq!(part.targets[p], whole.targets[w]);
    }
}

/// Ranks sum their parts of the training block: the parts' sums, added, give the
/// whole block's statistics (lead 1 and 2; parts of every size, empty ones too; one
/// training range, and two on both sides of a test period).
#[test]
fn statistics_from_parts_of_the_training_block_equal_the_whole_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = regional(dir.path());
    for lead in [1, 2] {
        let (ds, fractions, _) = setup(path.clone(), WindowSpec::lead_spaced(2, lead));
        for splits in [
            fractions.clone(),
            around_a_test_period(&ds, fractions.window),
        ] {
            let whole = NormStats::compute(&ds, &splits).unwrap();
            let steps = splits.steps(Split::Train).count();
            for ranks in [1, 2, 3, steps + 2] {
                let mut total: Vec<f64> = Vec::new();
                for rank in 0..ranks {
                    let part = meshcast::distributed::shard(steps, rank, ranks);
                    let sums = meshcast::data::StatsSums::over(&ds, &splits, part).unwrap();
                    let flat = sums.to_vec();
                    total.resize(flat.len(), 0.0);
                    total.iter_mut().zip(flat).for_each(|(t, v)| *t += v);
                }
                let sums = meshcast::data::StatsSums::from_vec(&total);
                let parts = NormStats::from_sums(&ds, &splits, &sums).unwrap();
                let what = format!("lead {lead}, {ranks} parts, {:?}", splits.train);
                assert!(close(&parts.mean, &whole.mean), "{what}");
                assert!(close(&parts.std, &whole.std), "{what}");
                assert!(close(&parts.diff_std, &whole.diff_std), "{what}");
            }
        }
    }
}

/// Relative closeness: the sums' order differs between parts, and the std's
/// cancellation amplifies that to ~1e-12.
fn close(a: &[f64], b: &[f64]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-9 * y.abs().max(1.0))
}

/// Training on both sides of a test period: steps 0..12 and 24..40 (the generated
/// data start 2000-01-01 00:00, 6-hourly).
fn around_a_test_period(ds: &Dataset, window: WindowSpec) -> Splits {
    let spec = SplitSpec {
        periods: Some(SplitPeriods {
            train: vec![
                "2000-01-07..2000-01-10 18:00".into(),
                "2000-01-01..2000-01-03".into(),
            ],
            validation: vec![],
            test: vec!["2000-01-04..2000-01-06 18:00".into()],
        }),
        ..SplitSpec::default()
    };
    Splits::new(&ds.time, &spec, window).unwrap()
}

/// With two training ranges, a time difference never spans the test period between
/// them: the statistics equal those computed by hand range by range.
#[test]
fn statistics_of_two_training_ranges_skip_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, fractions, _) = setup(regional(dir.path()), WindowSpec::lead_spaced(2, 1));
    let splits = around_a_test_period(&ds, fractions.window);
    assert_eq!(splits.train, vec![0..12, 24..40]);
    assert_eq!(splits.test, vec![12..24]);
    let stats = NormStats::compute(&ds, &splits).unwrap();
    let mut reader = StepReader::default();
    let cells = ds.grid.len();
    let (mut diffs, mut values) = (Vec::new(), Vec::new());
    for range in &splits.train {
        let states: Vec<_> = range
            .clone()
            .map(|t| reader.read(&ds, t).unwrap())
            .collect();
        for (i, now) in states.iter().enumerate() {
            for k in (0..cells).filter(|&k| now.valid[k]) {
                values.push(now.values[k] as f64);
                if i > 0 && states[i - 1].valid[k] {
                    diffs.push((now.values[k] - states[i - 1].values[k]) as f64);
                }
            }
        }
    }
    let mean_std = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (
            m,
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt(),
        )
    };
    let ((mean, std), (_, diff_std)) = (mean_std(&values), mean_std(&diffs));
    assert!(close(
        &[stats.mean[0], stats.std[0], stats.diff_std[0]],
        &[mean, std, diff_std]
    ));
    assert_eq!(stats.train_steps, vec![(0, 12), (24, 40)]);
    // Samples lie inside one range: none has inputs before the gap and a target after.
    for t0 in splits.samples(Split::Train) {
        assert!(splits
            .train
            .iter()
            .any(|r| r.contains(&(t0 - 1)) && r.contains(&(t0 + 1))));
    }
    assert_eq!(splits.samples(Split::Train).len(), 10 + 14);
}
