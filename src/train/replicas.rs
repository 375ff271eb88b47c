//! What the ranks of a data-parallel run exchange: the gradients of an optimizer step, packed into
//! one flat f32 buffer and summed; the parameters and optimizer moments of rank 0 (at
//! the start and at resume), so that every replica starts equal; and a fingerprint of
//! the parameters that proves they still are.

use candle_core::{DType, Tensor};

use super::optimizer::{AdamW, Slot};
use crate::distributed::Collective;

/// Sums `grads` (one per parameter of `slots`; None counts as zeros) over the ranks in
/// one all-reduce. A parameter no rank has a gradient for stays None, as in one
/// process (AdamW leaves it untouched). The gradients are packed on their device and
/// cross to the host and back in one copy each (not one per tensor, on a GPU).
pub fn sum_gradients(
    collective: &dyn Collective,
    grads: &mut [Option<Tensor>],
    slots: &[Slot],
) -> anyhow::Result<()> {
    if collective.size() == 1 || slots.is_empty() {
        return Ok(());
    }
    let mut present: Vec<f64> = grads.iter().map(|g| g.is_some() as u8 as f64).collect();
    collective.all_reduce_f64(&mut present)?;
    let parts = grads
        .iter()
        .zip(slots)
        .map(|(g, Slot { var, .. })| match g {
            Some(g) => g.to_dtype(DType::F32)?.flatten_all(),
            None => Tensor::zeros(var.elem_count(), DType::F32, var.device()),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut flat = Tensor::cat(&parts, 0)?.to_vec1::<f32>()?;
    drop(parts);
    collective.all_reduce_f32(&mut flat)?;
    let total = flat.len();
    let summed = Tensor::from_vec(flat, total, slots[0].var.device())?;
    let mut offset = 0;
    for ((g, Slot { var, .. }), &anyone) in grads.iter_mut().zip(slots).zip(&present) {
        let n = var.elem_count();
        let part = summed.narrow(0, offset, n)?.reshape(var.shape())?;
        offset += n;
        *g = (anyone > 0.0)
            .then(|| part.to_dtype(var.dtype()))
            .transpose()?;
    }
    Ok(())
}

/// Every rank takes rank 0's parameters and AdamW moments (and step count): replicas
/// start equal whatever each rank initialised or loaded.
pub fn broadcast_state(collective: &dyn Collective, optimizer: &mut AdamW) -> anyhow::Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    let mut bytes = Vec::new();
    if collective.rank() == 0 {
        bytes.extend((optimizer.step_t as u64).to_le_bytes());
        for slot in &optimizer.slots {
            for t in [slot.var.as_tensor(), &slot.m, &slot.v] {
                let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
    }
    collective.broadcast_bytes(&mut bytes)?;
    let expected = 8 + 12
        * optimizer
            .slots
            .iter()
            .map(|s| s.var.elem_count())
            .sum::<usize>();
    anyhow::ensure!(
        bytes.len() == expected,
        "rank 0 sent {} bytes of model state, this rank's model needs {expected}: the ranks built different models",
        bytes.len()
    );
    optimizer.step_t = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let mut offset = 8;
    let mut take = |like: &Tensor| -> anyhow::Result<Tensor> {
        let n = like.elem_count();
        let values: Vec<f32> = bytes[offset..offset + 4 * n]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        offset += 4 * n;
        Ok(Tensor::from_vec(values, like.shape(), like.device())?.to_dtype(like.dtype())?)
    };
    for slot in &mut optimizer.slots {
        slot.var.set(&take(slot.var.as_tensor())?)?;
        slot.m = take(&slot.m)?;
        slot.v = take(&slot.v)?;
    }
    Ok(())
}

/// Refuses to go on when any rank's parameters differ from rank 0's (bit for bit):
/// replicas that drift apart would silently train different models.
pub fn check_replicas(collective: &dyn Collective, slots: &[Slot]) -> anyhow::Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    let differing = ranks_differing(collective, &fingerprint(slots)?.to_le_bytes())?;
    anyhow::ensure!(
        differing == 0,
        "the parameters of {differing} of {} ranks differ from rank 0's: the replicas diverged (a rank read different data or ran a different build)",
        collective.size()
    );
    Ok(())
}

/// Refuses, on every rank together, a run that some rank resolved otherwise than rank
/// 0 (`identity`: its settings, data fingerprint and sample count): such ranks would
/// exchange buffers of other sizes, or at other steps.
pub fn check_same_run(collective: &dyn Collective, identity: &str) -> anyhow::Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    let differing = ranks_differing(collective, identity.as_bytes())?;
    if differing > 0 {
        return Err(crate::error::InputError(format!(
            "{differing} of {} ranks resolved another run than rank 0 (settings, data files or samples differ): \
             start every rank with the same flags, config and data",
            collective.size()
        ))
        .into());
    }
    Ok(())
}

/// How many ranks hold other bytes than rank 0's `mine` (the same count on every rank).
fn ranks_differing(collective: &dyn Collective, mine: &[u8]) -> anyhow::Result<usize> {
    let mut theirs = mine.to_vec();
    collective.broadcast_bytes(&mut theirs)?;
    let mut differing = [(theirs != mine) as u8 as f64];
    collective.all_reduce_f64(&mut differing)?;
    Ok(differing[0] as usize)
}

/// FNV-1a over the parameters' f32 bits.
fn fingerprint(slots: &[Slot]) -> anyhow::Result<u64> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for Slot { var, .. } in slots {
        let values = var.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        for byte in values.iter().flat_map(|v| v.to_bits().to_le_bytes()) {
            hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(hash)
}
