//! What the ranks of a data-parallel run exchange: the flat gradients of an optimizer
//! step, summed; the parameters and optimizer moments of rank 0 (at
//! the start and at resume), so that every replica starts equal; and a fingerprint of
//! the parameters that proves they still are.

use candle_core::DType;

use super::optimizer::{AdamW, FlatGrads};
use crate::distributed::Collective;

/// Sums the flat gradients of an optimizer step over the ranks in one all-reduce (one
/// copy to the host and back, on a GPU). A parameter no rank has a gradient for stays
/// absent, as in one process (AdamW leaves it untouched).
pub fn sum_gradients(collective: &dyn Collective, grads: &mut FlatGrads) -> anyhow::Result<()> {
    if collective.size() == 1 || grads.present.is_empty() {
        return Ok(());
    }
    let mut present: Vec<f64> = grads.present.iter().map(|&p| p as u8 as f64).collect();
    collective.all_reduce_f64(&mut present)?;
    grads.values = collective.all_reduce_tensor(&grads.values)?;
    grads.present = present.iter().map(|&p| p > 0.0).collect();
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
        let values = optimizer.state_values()?;
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    collective.broadcast_bytes(&mut bytes)?;
    let expected = 8 + 24 * optimizer.len();
    anyhow::ensure!(
        bytes.len() == expected,
        "rank 0 sent {} bytes of model state, this rank's model needs {expected}: the ranks built different models",
        bytes.len()
    );
    optimizer.step_t = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let values: Vec<f64> = bytes[8..]
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    optimizer.set_state_values(values)?;
    Ok(())
}

/// Refuses to go on when any rank's parameters differ from rank 0's (bit for bit):
/// replicas that drift apart would silently train different models.
pub fn check_replicas(collective: &dyn Collective, optimizer: &AdamW) -> anyhow::Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    let differing = ranks_differing(collective, &fingerprint(optimizer)?.to_le_bytes())?;
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

/// FNV-1a over the weights' bits (as f64: exact for f32 weights).
fn fingerprint(optimizer: &AdamW) -> anyhow::Result<u64> {
    let values = optimizer
        .weights()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in values.iter().flat_map(|v| v.to_bits().to_le_bytes()) {
        hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
    }
    Ok(hash)
}
