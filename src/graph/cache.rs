//! On-disk cache of built graphs.
//!
//! Building is deterministic, so a graph is fully determined by its inputs: the
//! grid coordinates, the valid-cell mask and [`GraphOptions`]. Those are hashed
//! (SHA-256) into the file name and, together with [`FORMAT_VERSION`], into a key
//! stored in the file. A cache file is never trusted blindly: its version, key,
//! a SHA-256 of its tensor data and every index range are checked on load, and a
//! file that fails any check is logged, rebuilt and overwritten. Files are written
//! to a temporary name, fsynced and renamed, so a crash never leaves a half file
//! under the real name.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::grid::Grid;

use super::formats::Coo;
use super::sets::{EdgeSet, NodeSet, EDGE_FEATURES, NODE_FEATURES};
use super::{build, GraphOptions, GridNodeMap, WeatherGraph};

/// Version of the graph construction and file layout; bump it whenever either
/// changes, so that files written by older builds are rebuilt.
pub const FORMAT_VERSION: u32 = 1;

/// Where a graph came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Loaded from a valid cache file.
    Hit,
    /// No cache file yet: built and saved.
    Miss,
    /// A cache file existed but could not be trusted: built and overwritten.
    Rebuilt { reason: String },
    /// No cache directory given: built, not saved.
    Disabled,
}

impl std::fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheOutcome::Hit => write!(f, "hit (loaded from cache)"),
            CacheOutcome::Miss => write!(f, "miss (built and cached)"),
            CacheOutcome::Rebuilt { reason } => write!(f, "rebuilt ({reason})"),
            CacheOutcome::Disabled => write!(f, "disabled (built)"),
        }
    }
}

/// The default cache directory: `<user cache dir>/meshcast/graphs`.
pub fn default_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("meshcast").join("graphs"))
}

/// Removes every cached graph (and temporary files of interrupted writes) from `dir`;
/// returns the files and bytes removed. Other files in `dir` are left alone.
pub fn clear(dir: &Path) -> Result<(usize, u64)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok((0, 0));
    };
    let (mut files, mut bytes) = (0, 0);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let graph = name.starts_with("graph-") && name.ends_with(".safetensors");
        if graph || crate::util::is_temp_name(&name) {
            bytes += entry.metadata().map_or(0, |m| m.len());
            fs::remove_file(entry.path())
                .map_err(|e| anyhow!("{}: cannot remove: {e}", entry.path().display()))?;
            files += 1;
        }
    }
    Ok((files, bytes))
}

/// Loads the graph for these inputs from `cache` (a directory) or builds it and
/// saves it there. `None` disables caching. Also returns the seconds spent loading
/// or building (and saving).
pub fn load_or_build(
    grid: &Grid,
    valid: &[bool],
    options: &GraphOptions,
    cache: Option<&Path>,
) -> Result<(WeatherGraph, CacheOutcome, f64)> {
    let start = Instant::now();
    let Some(dir) = cache else {
        let graph = {
            let _spinner = crate::util::spinner("building the mesh graph");
            build(grid, valid, options)?
        };
        let secs = start.elapsed().as_secs_f64();
        tracing::info!("built graph in {secs:.2} s (graph cache disabled)");
        return Ok((graph, CacheOutcome::Disabled, secs));
    };
    let key = CacheKey::new(grid, valid, options);
    let path = dir.join(key.file_name());
    let outcome = match fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CacheOutcome::Miss,
        Err(e) => CacheOutcome::Rebuilt {
            reason: format!("cannot read it: {e}"),
        },
        Ok(bytes) => match decode(&bytes, &key, grid.len()) {
            Ok(graph) => {
                let secs = start.elapsed().as_secs_f64();
                tracing::info!("loaded graph from cache {} in {secs:.2} s", path.display());
                return Ok((graph, CacheOutcome::Hit, secs));
            }
            Err(e) => CacheOutcome::Rebuilt {
                reason: format!("{e:#}"),
            },
        },
    };
    if let CacheOutcome::Rebuilt { reason } = &outcome {
        tracing::warn!(
            "ignoring graph cache file {}: {reason}; rebuilding it",
            path.display()
        );
    }
    // Validate before anything touches the cache directory.
    let graph = {
        let _spinner = crate::util::spinner("building the mesh graph");
        build(grid, valid, options)?
    };
    match encode(&graph, &key).and_then(|bytes| crate::util::write_atomic(&path, &bytes)) {
        Ok(()) => tracing::info!(
            "built graph in {:.2} s, cached at {}",
            start.elapsed().as_secs_f64(),
            path.display()
        ),
        Err(e) => tracing::warn!(
            "built graph but could not cache it at {}: {e:#}",
            path.display()
        ),
    }
    Ok((graph, outcome, start.elapsed().as_secs_f64()))
}

/// The two hashes that identify a cache file.
struct CacheKey {
    /// Hex SHA-256 of the inputs only: the file name, stable across format versions
    /// so that a version bump overwrites the old file instead of leaving it behind.
    inputs: String,
    /// Hex SHA-256 of [`FORMAT_VERSION`] and the inputs, stored in and checked against the file.
    key: String,
}

impl CacheKey {
    fn new(grid: &Grid, valid: &[bool], options: &GraphOptions) -> CacheKey {
        let mut h = Sha256::new();
        h.update(b"meshcast graph inputs\0");
        for axis in [&grid.lat, &grid.lon] {
            h.update((axis.len() as u64).to_le_bytes());
            axis.iter().for_each(|x| h.update(x.to_le_bytes()));
        }
        h.update([grid.global as u8]);
        h.update((valid.len() as u64).to_le_bytes());
        h.update(valid.iter().map(|&v| v as u8).collect::<Vec<u8>>());
        h.update(options.mesh_level.to_le_bytes());
        match options.regional_margin {
            None => h.update([0u8]),
            Some(m) => {
                h.update([1u8]);
                h.update(m.to_le_bytes());
            }
        }
        h.update(options.radius_factor.to_le_bytes());
        let inputs = hex(&h.finalize());
        let mut k = Sha256::new();
        k.update(FORMAT_VERSION.to_le_bytes());
        k.update(inputs.as_bytes());
        CacheKey {
            inputs,
            key: hex(&k.finalize()),
        }
    }

    fn file_name(&self) -> String {
        format!("graph-{}.safetensors", &self.inputs[..32])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const EDGE_SETS: [&str; 3] = ["grid2mesh", "mesh", "mesh2grid"];

fn edge_sets(g: &WeatherGraph) -> [&EdgeSet; 3] {
    [&g.grid2mesh, &g.mesh, &g.mesh2grid]
}

fn encode(g: &WeatherGraph, key: &CacheKey) -> Result<Vec<u8>> {
    // (name, dtype, shape, little-endian bytes); names sort the same way safetensors orders them.
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, nodes) in [("grid_nodes", &g.grid_nodes), ("mesh_nodes", &g.mesh_nodes)] {
        tensors.push((
            format!("{name}.lat"),
            Dtype::F64,
            vec![nodes.len()],
            le_bytes(&nodes.lat),
        ));
        tensors.push((
            format!("{name}.lon"),
            Dtype::F64,
            vec![nodes.len()],
            le_bytes(&nodes.lon),
        ));
        let shape = vec![nodes.len(), NODE_FEATURES];
        tensors.push((
            format!("{name}.features"),
            Dtype::F32,
            shape,
            le_bytes(&nodes.features),
        ));
    }
    tensors.push((
        "grid_cells".into(),
        Dtype::U32,
        vec![g.grid_map.n_nodes()],
        le_bytes(g.grid_map.cells()),
    ));
    for (name, set) in EDGE_SETS.iter().zip(edge_sets(g)) {
        let n = set.len();
        tensors.push((
            format!("{name}.senders"),
            Dtype::U32,
            vec![n],
            le_bytes(set.senders()),
        ));
        tensors.push((
            format!("{name}.receivers"),
            Dtype::U32,
            vec![n],
            le_bytes(set.receivers()),
        ));
        tensors.push((
            format!("{name}.features"),
            Dtype::F32,
            vec![n, EDGE_FEATURES],
            le_bytes(&set.features),
        ));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut digest = Sha256::new();
    tensors.iter().for_each(|t| digest.update(&t.3));
    let digest = hex(&digest.finalize());
    let metadata = HashMap::from([
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("key".to_string(), key.key.clone()),
        ("options".to_string(), serde_json::to_string(&g.options)?),
        ("n_cells".to_string(), g.grid_map.n_cells().to_string()),
        ("data_sha256".to_string(), digest),
    ]);
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            Ok((name.as_str(), TensorView::new(*dtype, shape.clone(), data)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, Some(metadata))?)
}

fn decode(bytes: &[u8], key: &CacheKey, n_cells: usize) -> Result<WeatherGraph> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow!("not a valid safetensors file: {e}"))?;
    let meta = meta
        .metadata()
        .as_ref()
        .ok_or_else(|| anyhow!("no metadata"))?;
    let get = |k: &str| meta.get(k).ok_or_else(|| anyhow!("metadata lacks {k}"));
    let version = get("format_version")?;
    ensure!(
        *version == FORMAT_VERSION.to_string(),
        "written by graph format version {version}, this build uses {FORMAT_VERSION}"
    );
    ensure!(
        *get("key")? == key.key,
        "stored key does not match the grid, mask and options"
    );
    ensure!(
        get("n_cells")?.parse::<usize>()? == n_cells,
        "cell count does not match the grid"
    );
    let options: GraphOptions = serde_json::from_str(get("options")?)?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("not a valid safetensors file: {e}"))?;
    ensure!(
        data_digest(&st) == *get("data_sha256")?,
        "tensor data checksum mismatch"
    );

    let grid_nodes = read_node_set(&st, "grid_nodes")?;
    let mesh_nodes = read_node_set(&st, "mesh_nodes")?;
    let cells = read_grid_cells(&st, grid_nodes.len(), n_cells)?;
    let (ng, nm) = (grid_nodes.len(), mesh_nodes.len());
    Ok(WeatherGraph {
        options,
        grid2mesh: read_edge_set(&st, "grid2mesh", ng, nm)?,
        mesh: read_edge_set(&st, "mesh", nm, nm)?,
        mesh2grid: read_edge_set(&st, "mesh2grid", nm, ng)?,
        grid_nodes,
        mesh_nodes,
        grid_map: GridNodeMap::from_cells(cells, n_cells),
    })
}

/// Reads the node set stored under `name`, checking that its tensors agree in size.
fn read_node_set(st: &SafeTensors, name: &str) -> Result<NodeSet> {
    let lat: Vec<f64> = read(st, &format!("{name}.lat"), Dtype::F64)?;
    let lon: Vec<f64> = read(st, &format!("{name}.lon"), Dtype::F64)?;
    let features: Vec<f32> = read(st, &format!("{name}.features"), Dtype::F32)?;
    ensure!(
        lat.len() == lon.len() && features.len() == lat.len() * NODE_FEATURES,
        "{name}: inconsistent sizes"
    );
    Ok(NodeSet { lat, lon, features })
}

/// Reads the grid cell of each of the `n_grid_nodes` grid nodes, checking that they
/// are ascending indices below `n_cells`.
fn read_grid_cells(st: &SafeTensors, n_grid_nodes: usize, n_cells: usize) -> Result<Vec<u32>> {
    let cells: Vec<u32> = read(st, "grid_cells", Dtype::U32)?;
    ensure!(cells.len() == n_grid_nodes, "grid_cells: wrong length");
    ensure!(
        cells.windows(2).all(|w| w[0] < w[1])
            && cells.last().is_none_or(|&c| (c as usize) < n_cells),
        "grid_cells: not ascending cell indices"
    );
    Ok(cells)
}

/// Reads the edge set stored under `name`, checking its sizes and that every edge
/// joins existing sender and receiver nodes.
fn read_edge_set(
    st: &SafeTensors,
    name: &str,
    n_senders: usize,
    n_receivers: usize,
) -> Result<EdgeSet> {
    let senders: Vec<u32> = read(st, &format!("{name}.senders"), Dtype::U32)?;
    let receivers: Vec<u32> = read(st, &format!("{name}.receivers"), Dtype::U32)?;
    let features: Vec<f32> = read(st, &format!("{name}.features"), Dtype::F32)?;
    ensure!(
        senders.len() == receivers.len() && features.len() == senders.len() * EDGE_FEATURES,
        "{name}: inconsistent sizes"
    );
    ensure!(
        senders.iter().all(|&s| (s as usize) < n_senders)
            && receivers.iter().all(|&r| (r as usize) < n_receivers),
        "{name}: node index out of range"
    );
    Ok(EdgeSet::new(
        Coo {
            n_senders,
            n_receivers,
            senders,
            receivers,
        },
        features,
    ))
}

/// SHA-256 over the tensors' data in name order (safetensors lays tensors out in
/// its own order, so the digest is taken per tensor, the same way as when saving).
fn data_digest(st: &SafeTensors) -> String {
    let mut names = st.names();
    names.sort_unstable();
    let mut digest = Sha256::new();
    for name in names {
        digest.update(st.tensor(name).expect("listed tensor").data());
    }
    hex(&digest.finalize())
}

/// Plain numbers that round-trip through little-endian bytes.
trait Element: Copy {
    const SIZE: usize;
    fn write(self, out: &mut Vec<u8>);
    fn read(b: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty) => {
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("chunk of the element size"))
            }
        }
    };
}
element!(f64);
element!(f32);
element!(u32);

fn le_bytes<T: Element>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * T::SIZE);
    values.iter().for_each(|v| v.write(&mut out));
    out
}

fn read<T: Element>(st: &SafeTensors, name: &str, dtype: Dtype) -> Result<Vec<T>> {
    let view = st.tensor(name).map_err(|e| anyhow!("tensor {name}: {e}"))?;
    if view.dtype() != dtype {
        bail!(
            "tensor {name}: dtype {:?}, expected {dtype:?}",
            view.dtype()
        );
    }
    Ok(view.data().chunks_exact(T::SIZE).map(T::read).collect())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn inputs() -> (Grid, Vec<bool>, GraphOptions) {
        let grid = Grid::global_cell_centred(10.0);
        let valid = (0..grid.len()).map(|c| c % 11 != 0).collect();
        (
            grid,
            valid,
            GraphOptions {
                mesh_level: 3,
                ..GraphOptions::default()
            },
        )
    }

    /// Runs `f` with tracing captured; returns its result and the log text.
    fn with_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Capture(writer.clone()))
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        (out, text)
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn cache_file(dir: &Path) -> PathBuf {
        let files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(
            files.len(),
            1,
            "exactly one cache file, no temp files left: {files:?}"
        );
        files[0].clone()
    }

    #[test]
    fn miss_then_hit_equals_fresh_build() {
        let (grid, valid, opts) = inputs();
        let dir = tempfile::tempdir().unwrap();
        let fresh = build(&grid, &valid, &opts).unwrap();
        let ((g1, o1, _), logs) =
            with_logs(|| load_or_build(&grid, &valid, &opts, Some(dir.path())).unwrap());
        assert_eq!(o1, CacheOutcome::Miss);
        assert!(
            logs.contains("built graph") && logs.contains("cached at"),
            "{logs}"
        );
        let ((g2, o2, _), logs) =
            with_logs(|| load_or_build(&grid, &valid, &opts, Some(dir.path())).unwrap());
        assert_eq!(o2, CacheOutcome::Hit);
        assert!(logs.contains("loaded graph from cache"), "{logs}");
        assert_eq!(g1, fresh);
        assert_eq!(g2, fresh);
        cache_file(dir.path());
    }

    #[test]
    fn different_inputs_use_different_files() {
        let (grid, mut valid, opts) = inputs();
        let dir = tempfile::tempdir().unwrap();
        load_or_build(&grid, &valid, &opts, Some(dir.path())).unwrap();
        valid[5] = false;
        let (_, outcome, _) = load_or_build(&grid, &valid, &opts, Some(dir.path())).unwrap();
        assert_eq!(outcome, CacheOutcome::Miss);
        let opts2 = GraphOptions {
            radius_factor: 0.7,
            ..opts
        };
        assert_eq!(
            load_or_build(&grid, &valid, &opts2, Some(dir.path()))
                .unwrap()
                .1,
            CacheOutcome::Miss
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn disabled_cache_builds() {
        let (grid, valid, opts) = inputs();
        let (g, outcome, secs) = load_or_build(&grid, &valid, &opts, None).unwrap();
        assert_eq!(outcome, CacheOutcome::Disabled);
        assert!(secs >= 0.0);
        assert_eq!(g, build(&grid, &valid, &opts).unwrap());
    }

    /// Damages the cache file with `damage`, then expects a warning, a rebuild
    /// equal to a fresh build, and a good file afterwards.
    fn rebuilt_after(damage: impl FnOnce(&mut Vec<u8>), expect_reason: &str) {
        let (grid, valid, opts) = inputs();
        let dir = tempfile::tempdir().unwrap();
        load_or_build(&grid, &valid, &opts, Some(dir.path())).unwrap();
        let path = cache_file(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        damage(&mut bytes);
        fs::write(&path, &bytes).unwrap();
        let ((g, outcome, _), logs) =
            with_logs(|| load_or_build(&grid, &valid, &opts, Some(dir.path())).unwrap());
        let CacheOutcome::Rebuilt { reason } = outcome else {
            panic!("expected a rebuild, got {outcome:?}")
        };
        assert!(reason.contains(expect_reason), "reason: {reason}");
        assert!(
            logs.contains("WARN") && logs.contains("rebuilding"),
            "{logs}"
        );
        assert_eq!(g, build(&grid, &valid, &opts).unwrap());
        assert_eq!(
            load_or_build(&grid, &valid, &opts, Some(dir.path()))
                .unwrap()
                .1,
            CacheOutcome::Hit
        );
        cache_file(dir.path());
    }

    fn replace(bytes: &mut [u8], from: &str, to: &str) {
        assert_eq!(from.len(), to.len());
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .expect("pattern in header");
        bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    }

    #[test]
    fn truncated_file_is_rebuilt() {
        rebuilt_after(|b| b.truncate(b.len() / 2), "");
        rebuilt_after(|b| b.truncate(5), "not a valid safetensors file");
        rebuilt_after(Vec::clear, "");
    }

    #[test]
    fn clear_removes_cached_graphs_only() {
        let dir = tempfile::tempdir().unwrap();
        let grid = Grid::global_cell_centred(30.0);
        let valid = vec![true; grid.len()];
        let options = GraphOptions {
            mesh_level: 1,
            ..Default::default()
        };
        load_or_build(&grid, &valid, &options, Some(dir.path())).unwrap();
        fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let (files, bytes) = clear(dir.path()).unwrap();
        assert_eq!(files, 1);
        assert!(bytes > 0);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "notes.txt stays"
        );
    }

    #[test]
    fn flipped_bytes_are_rebuilt() {
        rebuilt_after(
            |b| {
                let n = b.len();
                b[n - 10] ^= 0xff;
            },
            "checksum",
        );
        rebuilt_after(|b| b[3] ^= 0x55, "");
        rebuilt_after(|b| b[20] ^= 0x55, "");
    }

    #[test]
    fn old_version_and_wrong_key_are_rebuilt() {
        let current = format!("\"format_version\":\"{FORMAT_VERSION}\"");
        let old = format!("\"format_version\":\"{}\"", FORMAT_VERSION - 1);
        rebuilt_after(|b| replace(b, &current, &old), "format version 0");
        rebuilt_after(
            |b| {
                let at = b.windows(7).position(|w| w == b"\"key\":\"").unwrap() + 7;
                b[at] = if b[at] == b'0' { b'1' } else { b'0' };
            },
            "stored key",
        );
    }
}
