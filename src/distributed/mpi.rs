//! The collectives over the system MPI (Open MPI, MPICH, Intel MPI), through rsmpi.
//! Only the main thread calls MPI (`MPI_THREAD_FUNNELED`); the prefetch and compute
//! threads never do.

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use super::Collective;

/// The most bytes one MPI call carries: MPI counts elements in a C int, so larger
/// buffers (a model above ~500M parameters) go in several calls.
const CHUNK_BYTES: usize = 1 << 30;

pub struct MpiCollective {
    world: SimpleCommunicator,
    /// Finalises MPI when dropped, at the end of the command.
    _universe: Universe,
}

impl MpiCollective {
    pub fn init() -> anyhow::Result<MpiCollective> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialised in this process"))?;
        Ok(MpiCollective {
            world: universe.world(),
            _universe: universe,
        })
    }
}

impl MpiCollective {
    /// Element-wise sum over the ranks, in place, at most `CHUNK_BYTES` per call.
    fn sum_in_chunks<T: Equivalence + Copy>(&self, buf: &mut [T]) {
        for part in buf.chunks_mut(CHUNK_BYTES / std::mem::size_of::<T>()) {
            let send = part.to_vec();
            self.world
                .all_reduce_into(&send[..], part, SystemOperation::sum());
        }
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_f32(&self, buf: &mut [f32]) -> anyhow::Result<()> {
        self.sum_in_chunks(buf);
        Ok(())
    }

    fn all_reduce_f64(&self, buf: &mut [f64]) -> anyhow::Result<()> {
        self.sum_in_chunks(buf);
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> anyhow::Result<()> {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        for part in bytes.chunks_mut(CHUNK_BYTES) {
            root.broadcast_into(part);
        }
        Ok(())
    }

    fn barrier(&self) {
        self.world.barrier();
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn transport(&self) -> &'static str {
        "mpi"
    }
}
