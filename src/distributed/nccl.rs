//! The gradients' sum GPU to GPU over NCCL (cargo feature `nccl`), on the training
//! stream, without the MPI path's two copies through host memory. MPI still starts the
//! processes, carries NCCL's unique id from rank 0 to the others, and runs every other
//! collective (a few scalars, the start-up broadcasts) on the host.

use std::cell::OnceCell;

use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{bail, CpuStorage, CudaStorage, DType, Device, InplaceOp1, Layout, Tensor};

use super::mpi::MpiCollective;
use super::Collective;

pub struct NcclCollective {
    mpi: MpiCollective,
    /// The clique of every rank's GPU, made at the first sum, on the stream of the
    /// tensors summed (so the sum is ordered after the backward pass that wrote them).
    comm: OnceCell<Comm>,
}

impl NcclCollective {
    pub fn init() -> anyhow::Result<NcclCollective> {
        Ok(NcclCollective {
            mpi: MpiCollective::init()?,
            comm: OnceCell::new(),
        })
    }

    /// The communicator on `device`'s stream: rank 0 makes the unique id, MPI gives it
    /// to the others, every rank joins (collectively, at the same call).
    fn comm(&self, device: &Device) -> anyhow::Result<&Comm> {
        if let Some(comm) = self.comm.get() {
            return Ok(comm);
        }
        let Device::Cuda(cuda) = device else {
            anyhow::bail!("--distributed nccl sums GPU tensors: train with --device cuda");
        };
        let mut bytes = match self.rank() {
            0 => {
                let id = Id::new().map_err(|e| anyhow::anyhow!("NCCL: no unique id: {e:?}"))?;
                id.internal().iter().map(|&c| c as u8).collect()
            }
            _ => Vec::new(),
        };
        self.mpi.broadcast_bytes(&mut bytes)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        anyhow::ensure!(
            bytes.len() == internal.len(),
            "NCCL: rank 0 sent an id of {} bytes",
            bytes.len()
        );
        for (to, from) in internal.iter_mut().zip(&bytes) {
            *to = *from as std::ffi::c_char;
        }
        let comm = Comm::from_rank(
            cuda.cuda_stream(),
            self.rank(),
            self.size(),
            Id::uninit(internal),
        )
        .map_err(|e| anyhow::anyhow!("NCCL: rank {} could not join: {e:?}", self.rank()))?;
        Ok(self.comm.get_or_init(|| comm))
    }
}

/// Sums an f32 or f64 tensor over the ranks in place.
struct SumOverRanks<'a>(&'a Comm);

impl InplaceOp1 for SumOverRanks<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        bail!("NCCL sums GPU tensors, not the CPU's")
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((from, to)) = l.contiguous_offsets() else {
            bail!("NCCL all-reduce: the tensor is not contiguous")
        };
        let done = match s.dtype() {
            DType::F64 => {
                let slice = s.as_cuda_slice_mut::<f64>()?;
                self.0
                    .all_reduce_in_place(&mut slice.slice_mut(from..to), &ReduceOp::Sum)
            }
            _ => {
                let slice = s.as_cuda_slice_mut::<f32>()?;
                self.0
                    .all_reduce_in_place(&mut slice.slice_mut(from..to), &ReduceOp::Sum)
            }
        };
        if let Err(e) = done {
            bail!("NCCL all-reduce: {e:?}")
        }
        Ok(())
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn size(&self) -> usize {
        self.mpi.size()
    }

    fn all_reduce_f32(&self, buf: &mut [f32]) -> anyhow::Result<()> {
        self.mpi.all_reduce_f32(buf)
    }

    fn all_reduce_f64(&self, buf: &mut [f64]) -> anyhow::Result<()> {
        self.mpi.all_reduce_f64(buf)
    }

    fn all_reduce_tensor(&self, t: &Tensor) -> anyhow::Result<Tensor> {
        let wide = match t.dtype() {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        let sum = t.to_dtype(wide)?.contiguous()?.copy()?;
        sum.inplace_op1(&SumOverRanks(self.comm(t.device())?))?;
        Ok(sum.to_dtype(t.dtype())?)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> anyhow::Result<()> {
        self.mpi.broadcast_bytes(bytes)
    }

    fn barrier(&self) {
        self.mpi.barrier()
    }

    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }

    fn transport(&self) -> &'static str {
        "nccl"
    }
}
