//! Processes that train one model together (data parallelism): who this process is
//! among them, and the few collectives the trainer needs: the sum of one flat buffer,
//! rank 0's bytes on every rank, a barrier, and ending every rank when one fails.
//!
//! One process: [`Single`], every collective a no-op. Several, launched by `mpirun` or
//! `srun`: the system MPI through rsmpi (`mpi.rs`, cargo feature `mpi`), and for the
//! gradients on GPUs optionally NCCL (`nccl.rs`, feature `nccl`). What the trainer
//! exchanges over them (gradients, parameters) is `train::replicas`; how a global
//! batch is split over the ranks, [`shard`].

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;

use std::rc::Rc;
use std::str::FromStr;

use candle_core::{DType, Tensor};

/// The collectives of a group of processes. Every rank must call the same collectives
/// in the same order; results are identical on every rank.
pub trait Collective {
    /// This process's rank, 0 to `size() - 1`; rank 0 writes the run's files.
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place.
    fn all_reduce_f32(&self, buf: &mut [f32]) -> anyhow::Result<()>;
    /// Element-wise sum over the ranks, in place.
    fn all_reduce_f64(&self, buf: &mut [f64]) -> anyhow::Result<()>;
    /// The element-wise sum over the ranks of a flat tensor (the gradients), on its
    /// device: through host memory and [`Collective::all_reduce_f32`] (f64 tensors
    /// through [`Collective::all_reduce_f64`]), unless the transport sums on the
    /// devices themselves (NCCL).
    fn all_reduce_tensor(&self, t: &Tensor) -> anyhow::Result<Tensor> {
        let (dtype, device, shape) = (t.dtype(), t.device().clone(), t.shape().clone());
        if dtype == DType::F64 {
            let mut flat = t.flatten_all()?.to_vec1::<f64>()?;
            self.all_reduce_f64(&mut flat)?;
            return Ok(Tensor::from_vec(flat, shape, &device)?);
        }
        let mut flat = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.all_reduce_f32(&mut flat)?;
        Ok(Tensor::from_vec(flat, shape, &device)?.to_dtype(dtype)?)
    }
    /// Rank 0's bytes replace every other rank's.
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> anyhow::Result<()>;
    fn barrier(&self);
    /// Ends the processes of every rank with `code` (a failure on one rank must never
    /// leave the others waiting in a collective).
    fn abort(&self, code: i32) -> !;
    /// What carries the collectives, for logs ("mpi").
    fn transport(&self) -> &'static str;
}

/// One process: nothing to exchange.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_f32(&self, _: &mut [f32]) -> anyhow::Result<()> {
        Ok(())
    }
    fn all_reduce_f64(&self, _: &mut [f64]) -> anyhow::Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>) -> anyhow::Result<()> {
        Ok(())
    }
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn transport(&self) -> &'static str {
        "none"
    }
}

/// `--distributed`: how this process finds the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distributed {
    /// MPI when a launcher (mpirun, srun) started this process among several, else one
    /// process.
    Auto,
    Mpi,
    /// MPI for the processes, NCCL for the gradients' sum on the GPUs.
    Nccl,
    /// One process, whatever launched it.
    Off,
}

impl Distributed {
    pub const NAMES: &'static [&'static str] = &["auto", "mpi", "nccl", "off"];
}

impl FromStr for Distributed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Distributed::Auto),
            "mpi" => Ok(Distributed::Mpi),
            "nccl" => Ok(Distributed::Nccl),
            "off" => Ok(Distributed::Off),
            other => Err(format!(
                "unknown --distributed '{other}' (auto, mpi, nccl, off)"
            )),
        }
    }
}

impl std::fmt::Display for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Distributed::Auto => "auto",
            Distributed::Mpi => "mpi",
            Distributed::Nccl => "nccl",
            Distributed::Off => "off",
        })
    }
}

/// What MPI launchers set: Open MPI's mpirun, MPICH's and Intel MPI's PMI, PMIx.
const MPI_LAUNCHERS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];

/// The number of processes a launcher started, from the environment it sets (MPI's
/// launchers, then Slurm's srun); None when no launcher did.
pub fn launched_processes() -> Option<usize> {
    env_count(MPI_LAUNCHERS).or_else(|| env_count(&["SLURM_STEP_NUM_TASKS"]))
}

/// This process's index among the ranks on its machine, as launchers set it (the GPU
/// `--device cuda` then takes); None outside a launcher.
pub fn local_rank() -> Option<usize> {
    env_count(&[
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "PMI_LOCAL_RANK",
        "SLURM_LOCALID",
    ])
}

/// The first of `names` set to a number.
fn env_count(names: &[&str]) -> Option<usize> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
}

/// The group this process belongs to. Call once, before any other thread starts.
pub fn connect(choice: Distributed) -> anyhow::Result<Rc<dyn Collective>> {
    let launched = launched_processes().unwrap_or(1);
    match choice {
        Distributed::Off => Ok(Rc::new(Single)),
        Distributed::Auto if launched <= 1 => Ok(Rc::new(Single)),
        Distributed::Auto | Distributed::Mpi => connect_mpi(launched),
        Distributed::Nccl => connect_nccl(),
    }
}

#[cfg(feature = "nccl")]
fn connect_nccl() -> anyhow::Result<Rc<dyn Collective>> {
    Ok(Rc::new(nccl::NcclCollective::init()?))
}

#[cfg(not(feature = "nccl"))]
fn connect_nccl() -> anyhow::Result<Rc<dyn Collective>> {
    Err(crate::error::InputError(
        "--distributed nccl, but this meshcast was built without NCCL: rebuild with \
         `cargo build --release --features nccl` (needs the CUDA toolkit, NCCL and MPI; \
         scripts/build-cuda.sh with FEATURES=nccl), or pass --distributed mpi (gradients \
         through host memory)"
            .into(),
    )
    .into())
}

/// One process, for a subcommand that does not run over several: refused when an MPI
/// launcher started several (each would write the same outputs). Slurm's variables
/// do not count here: a batch script's own step may carry them.
pub fn alone() -> anyhow::Result<Rc<dyn Collective>> {
    match env_count(MPI_LAUNCHERS) {
        Some(n) if n > 1 => Err(crate::error::InputError(format!(
            "started as one of {n} processes (mpirun or srun): only train-model and eval run over several; start this one alone"
        ))
        .into()),
        _ => Ok(Rc::new(Single)),
    }
}

#[cfg(feature = "mpi")]
fn connect_mpi(_launched: usize) -> anyhow::Result<Rc<dyn Collective>> {
    Ok(Rc::new(mpi::MpiCollective::init()?))
}

#[cfg(not(feature = "mpi"))]
fn connect_mpi(launched: usize) -> anyhow::Result<Rc<dyn Collective>> {
    let how = match launched {
        1 => "--distributed mpi".to_string(),
        n => format!("started as one of {n} processes (mpirun or srun)"),
    };
    Err(crate::error::InputError(format!(
        "{how}, but this meshcast was built without MPI: \
         rebuild with `cargo build --release --features mpi` (needs libopenmpi-dev and libclang-dev), \
         or pass --distributed off to run each process alone"
    ))
    .into())
}

/// The part of a global batch of `len` samples that `rank` of `size` takes: contiguous,
/// sizes differing by at most one (empty when there are more ranks than samples).
pub fn shard(len: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    (rank * len / size)..((rank + 1) * len / size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_a_batch_once_in_order() {
        for len in 0..9 {
            for size in 1..6 {
                let parts: Vec<_> = (0..size).map(|r| shard(len, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, len);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let (min, max) = (
                    parts.iter().map(|p| p.len()).min().unwrap(),
                    parts.iter().map(|p| p.len()).max().unwrap(),
                );
                assert!(max - min <= 1, "len {len} size {size}: {parts:?}");
            }
        }
    }

    #[test]
    fn every_name_parses_back() {
        for name in Distributed::NAMES {
            assert_eq!(&name.parse::<Distributed>().unwrap().to_string(), name);
        }
    }
}
