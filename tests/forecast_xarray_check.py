"""xarray's view of a meshcast forecast (tests/forecast_layout.rs runs this).

Usage: forecast_xarray_check.py FORECAST.nc TRUTH.nc EVAL.json

Checks that xarray decodes the WeatherBench2 layout (`time` as datetimes,
`prediction_timedelta` as timedeltas, `valid_time` = time + lead), that
`forecast - truth` on the native coordinates keeps the input's shape, and that the
latitude-weighted RMSE computed here equals the one `meshcast eval` reported for the
same initial times (relative difference below 1e-4), reading eval's flat JSON
records with pandas in one line.
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


if __name__ == "__main__":
    main(*sys.argv[1:4])
