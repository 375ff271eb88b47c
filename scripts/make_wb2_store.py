"""Writes a synthetic WeatherBench2-layout dataset for the Zarr benchmarks of
docs/benchmarks.md: 1.5-degree global grid (121 x 240, latitudes 90..-90, longitudes
0..358.5), 13 pressure levels, geopotential, temperature, u_component_of_wind,
v_component_of_wind, specific_humidity and vertical_velocity on every level, and
2m_temperature, mean_sea_level_pressure, 10m_u_component_of_wind and
10m_v_component_of_wind: 82 channels, 6-hourly. One chunk per time step and variable,
as WeatherBench2 chunks its stores.

Usage: python3 scripts/make_wb2_store.py OUT.zarr --steps N [--netcdf OUT.nc]
(--netcdf also writes the same values as NetCDF-4 with deflate level 4.)
"""
import argparse
import shutil

import numpy as np
import pandas as pd
import xarray as xr

LEVELS = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
UPPER = ["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind",
         "specific_humidity", "vertical_velocity"]
SURFACE = ["2m_temperature", "mean_sea_level_pressure", "10m_u_component_of_wind",
           "10m_v_component_of_wind"]


def dataset(steps):
    time = pd.date_range("2020-01-01", periods=steps, freq="6h")
    lat = np.linspace(90.0, -90.0, 121)
    lon = np.arange(240) * 1.5
    t = np.arange(steps, dtype="float32")[:, None, None]
    la = np.deg2rad(lat).astype("float32")[None, :, None]
    lo = np.deg2rad(lon).astype("float32")[None, None, :]
    wave = (np.cos(la) * np.sin(lo - 0.1 * t) + 0.3 * np.cos(3 * lo + 0.05 * t)).astype("float32")
    data = {}
    for k, name in enumerate(UPPER):
        scale = (np.arange(1, 14, dtype="float32") / 13.0)[None, :, None, None]
        data[name] = (("time", "level", "latitude", "longitude"),
                      (100.0 * k + 10.0 * scale + wave[:, None] * (1 + scale)).astype("float32"))
    for k, name in enumerate(SURFACE):
        data[name] = (("time", "latitude", "longitude"), (50.0 * k + 3.0 * wave).astype("float32"))
    coords = {"time": time, "level": np.array(LEVELS, dtype="int64"), "latitude": lat, "longitude": lon}
    ds = xr.Dataset(data, coords=coords)
    ds.latitude.attrs.update(units="degrees_north")
    ds.longitude.attrs.update(units="degrees_east")
    return ds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--netcdf")
    a = p.parse_args()
    ds = dataset(a.steps)
    time = {"time": {"units": "hours since 2020-01-01", "dtype": "int64"}}
    chunks = {v: {"chunks": (1,) + ds[v].shape[1:]} for v in ds.data_vars}
    shutil.rmtree(a.out, ignore_errors=True)
    ds.to_zarr(a.out, zarr_format=2, encoding={**time, **chunks}, consolidated=False)
    if a.netcdf:
        deflate = {v: {"zlib": True, "complevel": 4, "chunksizes": (1,) + ds[v].shape[1:]}
                   for v in ds.data_vars}
        ds.to_netcdf(a.netcdf, encoding={**time, **deflate}, engine="netcdf4")


if __name__ == "__main__":
    main()
