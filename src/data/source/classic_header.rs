//! The length a classic NetCDF file (CDF-1, CDF-2 or CDF-5) must have, read from its
//! header: where each variable's data begins and how long it is. libnetcdf opens a
//! truncated classic file and reads zeros past its end, so meshcast checks this itself.
//! Format: <https://docs.unidata.ucar.edu/netcdf-c/current/file_format_specifications.html>.

use std::io::{BufReader, Read};
use std::path::Path;

const ABSENT: u32 = 0;
const NC_DIMENSION: u32 = 0x0A;
const NC_VARIABLE: u32 = 0x0B;
const NC_ATTRIBUTE: u32 = 0x0C;
const STREAMING: u64 = 0xFFFF_FFFF;

/// Reads big-endian header fields; CDF-5 widens counts and sizes to 8 bytes, CDF-2 and
/// CDF-5 widen data offsets.
struct Header<R> {
    input: R,
    version: u8,
}

impl<R: Read> Header<R> {
    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0; 4];
        self.input.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        let mut b = [0; 8];
        self.input.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    /// A count or size: 4 bytes, 8 in CDF-5.
    fn count(&mut self) -> std::io::Result<u64> {
        match self.version {
            5 => self.u64(),
            _ => self.u32().map(u64::from),
        }
    }

    /// A data offset: 4 bytes in CDF-1, 8 in CDF-2 and CDF-5.
    fn offset(&mut self) -> std::io::Result<u64> {
        match self.version {
            1 => self.u32().map(u64::from),
            _ => self.u64(),
        }
    }

    /// Skips `n` bytes padded to a multiple of 4.
    fn skip_padded(&mut self, n: u64) -> std::io::Result<()> {
        let padded = n.div_ceil(4) * 4;
        let copied = std::io::copy(&mut (&mut self.input).take(padded), &mut std::io::sink())?;
        if copied < padded {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn skip_name(&mut self) -> std::io::Result<()> {
        let n = self.count()?;
        self.skip_padded(n)
    }

    /// A list's tag and element count (0 for an absent list).
    fn list(&mut self, tag: u32) -> std::io::Result<u64> {
        let (found, n) = (self.u32()?, self.count()?);
        if found != tag && !(found == ABSENT && n == 0) {
            return Err(std::io::Error::other(format!(
                "header list tag {found:#x}, expected {tag:#x}"
            )));
        }
        Ok(n)
    }

    fn skip_attributes(&mut self) -> std::io::Result<()> {
        for _ in 0..self.list(NC_ATTRIBUTE)? {
            self.skip_name()?;
            let size = type_size(self.u32()?)?;
            let n = self.count()?;
            self.skip_padded(n.saturating_mul(size))?;
        }
        Ok(())
    }
}

fn type_size(nc_type: u32) -> std::io::Result<u64> {
    match nc_type {
        1 | 2 | 7 => Ok(1),
        3 | 8 => Ok(2),
        4 | 5 | 9 => Ok(4),
        6 | 10 | 11 => Ok(8),
        t => Err(std::io::Error::other(format!(
            "unknown type {t} in the header"
        ))),
    }
}

/// One variable's data: where it begins, its bytes per record (or in all, when it has
/// no record dimension), and whether it is a record variable.
struct VarData {
    begin: u64,
    bytes: u64,
    record: bool,
    vsize: u64,
}

/// The bytes a classic file at `path` needs to hold all the data its header declares.
pub fn required_length(path: &Path) -> std::io::Result<u64> {
    let mut input = BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0; 4];
    input.read_exact(&mut magic)?;
    let mut h = Header {
        input,
        version: magic[3],
    };
    let numrecs = h.count()?;
    let mut dims = Vec::new();
    for _ in 0..h.list(NC_DIMENSION)? {
        h.skip_name()?;
        dims.push(h.count()?);
    }
    h.skip_attributes()?;
    let mut vars = Vec::new();
    for _ in 0..h.list(NC_VARIABLE)? {
        vars.push(variable(&mut h, &dims)?);
    }
    Ok(data_end(&vars, numrecs))
}

fn variable<R: Read>(h: &mut Header<R>, dims: &[u64]) -> std::io::Result<VarData> {
    h.skip_name()?;
    let rank = h.count()?;
    let (mut cells, mut record) = (1u64, false);
    for k in 0..rank {
        let id = h.count()? as usize;
        let len = *dims
            .get(id)
            .ok_or_else(|| std::io::Error::other(format!("dimension id {id} out of range")))?;
        match (k, len) {
            (0, 0) => record = true,
            _ => cells = cells.saturating_mul(len),
        }
    }
    h.skip_attributes()?;
    let size = type_size(h.u32()?)?;
    let vsize = h.count()?;
    let begin = h.offset()?;
    Ok(VarData {
        begin,
        bytes: cells.saturating_mul(size),
        record,
        vsize,
    })
}

/// Where the last variable's data ends. Records interleave every record variable; a
/// lone record variable's records are not padded.
fn data_end(vars: &[VarData], numrecs: u64) -> u64 {
    let record_vars: Vec<&VarData> = vars.iter().filter(|v| v.record).collect();
    let recsize = match record_vars.as_slice() {
        [only] => only.bytes,
        all => all.iter().map(|v| v.vsize).sum(),
    };
    let numrecs = if numrecs == STREAMING { 0 } else { numrecs };
    vars.iter()
        .map(|v| match (v.record, numrecs) {
            (false, _) => v.begin.saturating_add(v.bytes),
            (true, 0) => 0,
            (true, n) => v.begin + (n - 1).saturating_mul(recsize) + v.bytes,
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, record_vars: usize, format: netcdf::Options) {
        let mut f = netcdf::create_with(path, format).unwrap();
        f.add_unlimited_dimension("time").unwrap();
        f.add_dimension("x", 5).unwrap();
        f.add_attribute("title", "a header attribute").unwrap();
        f.add_variable::<f64>("x", &["x"]).unwrap();
        for k in 0..record_vars {
            let mut v = f
                .add_variable::<i16>(&format!("v{k}"), &["time", "x"])
                .unwrap();
            v.put_attribute("units", "m").unwrap();
        }
        f.enddef().unwrap();
        let mut fixed = f.variable_mut("x").unwrap();
        fixed.put_values(&[1.0, 2.0, 3.0, 4.0, 5.0], ..).unwrap();
        for k in 0..record_vars {
            let mut v = f.variable_mut(&format!("v{k}")).unwrap();
            v.put_values(&[7i16; 15], (0..3, ..)).unwrap();
        }
    }

    /// Written by libnetcdf, the files are as long as their header requires (up to the
    /// last record's padding).
    #[test]
    fn the_required_length_is_the_file_length() {
        let dir = tempfile::tempdir().unwrap();
        let format = |k| match k {
            0 => netcdf::Options::CLASSIC,
            1 => netcdf::Options::_64BIT_OFFSET,
            _ => netcdf::Options::_64BIT_DATA,
        };
        for k in 0..3 {
            for record_vars in [0, 1, 2] {
                let path = dir.path().join(format!("f{k}-{record_vars}.nc"));
                write(&path, record_vars, format(k));
                let len = std::fs::metadata(&path).unwrap().len();
                let required = required_length(&path).unwrap();
                assert!(
                    required <= len && len - required < 4,
                    "{path:?}: {required} of {len}"
                );
            }
        }
    }
}
