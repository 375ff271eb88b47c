//! Opening a data file: a Zarr store (a directory with Zarr metadata), or a NetCDF file
//! whose first bytes are sniffed, so that a file libnetcdf cannot open (or opens
//! although truncated) gets an error saying what is wrong.

use std::path::Path;

use super::hdf5::silence_hdf5_errors_on_this_thread;
use super::store::Store;
use super::zarr::{is_zarr_store, ZarrStore};
use super::Result;
use crate::error::InputError;

/// Opens a Zarr store or a NetCDF file, with an error that names it and says what is
/// wrong.
pub fn open_file(path: &Path) -> Result<Store> {
    if is_zarr_store(path) {
        return ZarrStore::open(path).map(Store::Zarr);
    }
    open_netcdf(path).map(Store::NetCdf)
}

/// Opens a NetCDF file with an error that names it and says what is wrong.
pub fn open_netcdf(path: &Path) -> Result<netcdf::File> {
    silence_hdf5_errors_on_this_thread();
    if !path.exists() {
        return Err(InputError::file(path, "no such file"));
    }
    if path.is_dir() {
        return Err(InputError::file(
            path,
            "is a directory, neither a NetCDF file nor a Zarr store (no .zgroup, .zarray or zarr.json)",
        ));
    }
    // A FIFO or a device would block or never end.
    if !path.metadata().is_ok_and(|m| m.is_file()) {
        return Err(InputError::file(
            path,
            "not a regular file (a pipe, socket or device): meshcast reads NetCDF files",
        ));
    }
    let format = sniff_format(path);
    let file = netcdf::open(path).map_err(|e| {
        let problem = match format {
            Some(kind) => {
                format!("not a readable NetCDF file ({kind}, possibly truncated or corrupt: {e})")
            }
            None => "not a NetCDF file (no classic CDF or HDF5 signature)".to_string(),
        };
        InputError::file(path, problem)
    })?;
    if format.is_some_and(|f| !f.starts_with("netCDF-4")) {
        check_netcdf3_length(path)?;
    }
    Ok(file)
}

/// libnetcdf opens a truncated classic file and reads zeros past its end; refuse a
/// file shorter than its header and the data it declares.
fn check_netcdf3_length(path: &Path) -> Result<()> {
    let actual = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let needed = super::classic_header::required_length(path)
        .map_err(|e| InputError::file(path, format!("truncated or corrupt NetCDF header: {e}")))?;
    if actual < needed {
        return Err(InputError::file(
            path,
            format!("truncated NetCDF file: {actual} bytes, but its header and data need {needed}"),
        ));
    }
    Ok(())
}

/// Names the format a file claims by its first bytes, if it is one NetCDF can be.
fn sniff_format(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    match &head[..n.min(8)] {
        [b'C', b'D', b'F', 1, ..] => Some("classic format"),
        [b'C', b'D', b'F', 2, ..] => Some("64-bit offset format"),
        [b'C', b'D', b'F', 5, ..] => Some("64-bit data format"),
        [0x89, b'H', b'D', b'F', ..] => Some("netCDF-4/HDF5 format"),
        _ => None,
    }
}
