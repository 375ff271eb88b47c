"""xarray's view of a meshcast forecast (tests/forecast_layout.rs runs this).

Usage: forecast_xarray_check.py FORECAST.nc TRUTH.nc EVAL.json SCORES.nc
       forecast_xarray_check.py shape FORECAST.nc VAR TRUTH.nc TRUTH_VAR NLAT NLON

Checks that xarray decodes the WeatherBench2 layout (`time` as datetimes,
`prediction_timedelta` as timedeltas, `valid_time` = time + lead), that
`forecast - truth` on the native coordinates keeps the input's shape, and that the
latitude-weighted RMSE computed here equals the one `meshcast eval` reported for the
same initial times (relative difference below 1e-4), reading eval's flat JSON
records with pandas in one line. Then that the same report written as NetCDF in
WeatherBench2's results layout holds every record at its coordinates in xarray.
The `shape` form checks only that one forecast field minus one truth field aligns on
the native coordinates to the expected (NLAT, NLON) grid without missing cells where
both have values (for inputs whose time axis xarray cannot decode, such as storm1996).
"""
import json
import sys

import numpy as np
import pandas as pd
import xarray as xr


def main(fc_path, truth_path, eval_path):
    fc = xr.open_dataset(fc_path)
    truth = xr.open_dataset(truth_path)
    report = json.load(open(eval_path))
    assert fc.time.dtype.kind == "M", fc.time.dtype
    assert fc.prediction_timedelta.dtype.kind == "m", fc.prediction_timedelta.dtype
    assert (fc.valid_time == fc.time + fc.prediction_timedelta).all()
    records = pd.DataFrame(report["records"])
    rmse_rows = records[(records.system == "model") & (records.metric == "rmse")]
    assert len(rmse_rows) > 0
    for entry in rmse_rows.to_dict("records"):
        name, var, level = entry["channel"], entry["variable"], entry["level"]
        level = None if pd.isna(level) else level
        lead = np.timedelta64(int(round(entry["lead_hours"] * 3600)), "s")
        sq = weight = 0.0
        for init in fc.time.values:
            f = fc[var].sel(time=init, prediction_timedelta=lead, drop=True)
            t = truth[var].sel(time=init + lead, drop=True)
            whole = f - t
            want = t.sel(level=f.level).shape if level is not None else t.shape
            assert whole.shape == want, (name, whole.shape, want)
            if level is not None:
                f, t = f.sel(level=level, drop=True), t.sel(level=level, drop=True)
            diff = f.astype("f8") - t.astype("f8")
            assert diff.shape == t.shape, (name, diff.shape, t.shape)
            w = np.cos(np.deg2rad(diff.latitude.astype("f8"))).clip(min=0)
            w = w.broadcast_like(diff).where(diff.notnull())
            sq += float((w * diff**2).sum())
            weight += float(w.sum())
        rmse = (sq / weight) ** 0.5
        reported = entry["value"]
        rel = abs(rmse - reported) / reported
        print(f"{name} +{entry['lead_hours']} h: xarray {rmse:.6g}, eval {reported:.6g}")
        assert rel < 1e-4, (name, entry["lead_hours"], rmse, reported)
    print("forecast - truth keeps the input's shape; RMSE equals eval's")


def check_scores_netcdf(scores_path, eval_path):
    scores = xr.open_dataset(scores_path)
    records = pd.DataFrame(json.load(open(eval_path))["records"])
    assert scores.lead_time.dtype.kind == "m", scores.lead_time.dtype
    assert list(scores.system.values) == ["model", "persistence", "climatology"]
    for entry in records.to_dict("records"):
        at = dict(system=entry["system"], metric=entry["metric"], region="global")
        at["lead_time"] = np.timedelta64(int(round(entry["lead_hours"] * 3600)), "s")
        if not pd.isna(entry["level"]):
            at["level"] = entry["level"]
        got = float(scores[entry["variable"]].sel(**at))
        assert abs(got - entry["value"]) <= 1e-12 * abs(entry["value"]), (entry, got)
    # The climatology forecast has no anomaly: its ACC is undefined, so missing.
    assert scores[records.variable[0]].sel(system="climatology", metric="acc").isnull().all()
    print(f"the WeatherBench2-layout scores hold all {len(records)} records")


def check_shape(fc_path, var, truth_path, truth_var, nlat, nlon):
    f = xr.open_dataset(fc_path)[var].isel(time=0, prediction_timedelta=0, drop=True)
    t = xr.open_dataset(truth_path)[truth_var]
    t = t.isel({d: 0 for d in t.dims if d not in f.dims}, drop=True)
    diff = f - t
    assert diff.shape == (int(nlat), int(nlon)), (diff.shape, nlat, nlon)
    assert int(diff.count()) == int((f.notnull() & t.notnull()).sum()) > 0
    print(f"{var} - {truth_var}: {diff.shape}, the input's grid")


if __name__ == "__main__":
    if sys.argv[1] == "shape":
        check_shape(*sys.argv[2:9])
    else:
        main(*sys.argv[1:4])
        check_scores_netcdf(sys.argv[4], sys.argv[3])
