//! Edge-list storage formats.
//!
//! COO (parallel sender/receiver arrays) is the canonical order: edge features are
//! stored in it and it is what the cache writes. Message passing aggregates at the
//! receiver, which wants edges grouped by receiver (CSR); backward passes and
//! patch extraction walk edges by sender (CSC). Both grouped formats keep an
//! `edge_ids` permutation back to COO order, so per-edge features never need to
//! be copied into another order and every conversion is lossless.

use serde::Serialize;

/// Coordinate format: edge `e` goes from `senders[e]` to `receivers[e]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coo {
    pub n_senders: usize,
    pub n_receivers: usize,
    pub senders: Vec<u32>,
    pub receivers: Vec<u32>,
}

/// Compressed sparse rows by receiver: the edges into receiver `r` are
/// `offsets[r]..offsets[r + 1]`, with senders `senders[k]` and COO ids `edge_ids[k]`.
/// Within a receiver, edges keep their COO order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csr {
    pub n_senders: usize,
    pub offsets: Vec<u32>,
    pub senders: Vec<u32>,
    pub edge_ids: Vec<u32>,
}

/// Compressed sparse columns by sender: the edges out of sender `s` are
/// `offsets[s]..offsets[s + 1]`, with receivers `receivers[k]` and COO ids `edge_ids[k]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csc {
    pub n_receivers: usize,
    pub offsets: Vec<u32>,
    pub receivers: Vec<u32>,
    pub edge_ids: Vec<u32>,
}

/// Bytes each format of one edge set takes (index arrays only, not features).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FormatBytes {
    pub coo: usize,
    pub csr: usize,
    pub csc: usize,
}

impl Coo {
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    pub fn bytes(&self) -> usize {
        4 * (self.senders.len() + self.receivers.len())
    }

    pub fn to_csr(&self) -> Csr {
        let (offsets, edge_ids) = group_by(&self.receivers, self.n_receivers);
        let senders = edge_ids.iter().map(|&e| self.senders[e as usize]).collect();
        Csr {
            n_senders: self.n_senders,
            offsets,
            senders,
            edge_ids,
        }
    }

    pub fn to_csc(&self) -> Csc {
        let (offsets, edge_ids) = group_by(&self.senders, self.n_senders);
        let receivers = edge_ids
            .iter()
            .map(|&e| self.receivers[e as usize])
            .collect();
        Csc {
            n_receivers: self.n_receivers,
            offsets,
            receivers,
            edge_ids,
        }
    }

    /// Number of edges into each receiver.
    pub fn in_degrees(&self) -> Vec<u32> {
        let mut deg = vec![0u32; self.n_receivers];
        for &r in &self.receivers {
            deg[r as usize] += 1;
        }
        deg
    }
}

impl Csr {
    pub fn n_receivers(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn bytes(&self) -> usize {
        4 * (self.offsets.len() + self.senders.len() + self.edge_ids.len())
    }

    /// Back to COO, in the original edge order.
    pub fn to_coo(&self) -> Coo {
        let n = self.senders.len();
        let (mut senders, mut receivers) = (vec![0u32; n], vec![0u32; n]);
        for r in 0..self.n_receivers() {
            for k in self.offsets[r] as usize..self.offsets[r + 1] as usize {
                let e = self.edge_ids[k] as usize;
                senders[e] = self.senders[k];
                receivers[e] = r as u32;
            }
        }
        Coo {
            n_senders: self.n_senders,
            n_receivers: self.n_receivers(),
            senders,
            receivers,
        }
    }

    pub fn to_csc(&self) -> Csc {
        self.to_coo().to_csc()
    }
}

impl Csc {
    pub fn n_senders(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn bytes(&self) -> usize {
        4 * (self.offsets.len() + self.receivers.len() + self.edge_ids.len())
    }

    /// Back to COO, in the original edge order.
    pub fn to_coo(&self) -> Coo {
        let n = self.receivers.len();
        let (mut senders, mut receivers) = (vec![0u32; n], vec![0u32; n]);
        for s in 0..self.n_senders() {
            for k in self.offsets[s] as usize..self.offsets[s + 1] as usize {
                let e = self.edge_ids[k] as usize;
                senders[e] = s as u32;
                receivers[e] = self.receivers[k];
            }
        }
        Coo {
            n_senders: self.n_senders(),
            n_receivers: self.n_receivers,
            senders,
            receivers,
        }
    }

    pub fn to_csr(&self) -> Csr {
        self.to_coo().to_csr()
    }
}

/// Stable counting sort of edge ids by `keys`: returns the group offsets and the
/// edge ids in grouped order.
fn group_by(keys: &[u32], n_groups: usize) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32; n_groups + 1];
    for &k in keys {
        offsets[k as usize + 1] += 1;
    }
    for i in 0..n_groups {
        offsets[i + 1] += offsets[i];
    }
    let mut next = offsets[..n_groups].to_vec();
    let mut ids = vec![0u32; keys.len()];
    for (e, &k) in keys.iter().enumerate() {
        ids[next[k as usize] as usize] = e as u32;
        next[k as usize] += 1;
    }
    (offsets, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Coo {
        // Unsorted, with repeated receivers and senders, and an isolated node 3.
        Coo {
            n_senders: 5,
            n_receivers: 4,
            senders: vec![4, 0, 2, 0, 1, 4, 2],
            receivers: vec![1, 2, 1, 0, 2, 0, 1],
        }
    }

    #[test]
    fn round_trips_are_lossless() {
        let coo = sample();
        let csr = coo.to_csr();
        let csc = coo.to_csc();
        assert_eq!(csr.to_coo(), coo);
        assert_eq!(csc.to_coo(), coo);
        assert_eq!(csr.to_csc(), csc);
        assert_eq!(csc.to_csr(), csr);
        assert_eq!(csr.to_csc().to_csr().to_coo(), coo);
    }

    #[test]
    fn csr_groups_by_receiver_stably() {
        let csr = sample().to_csr();
        assert_eq!(csr.offsets, vec![0, 2, 5, 7, 7]);
        assert_eq!(csr.edge_ids, vec![3, 5, 0, 2, 6, 1, 4]);
        assert_eq!(csr.senders, vec![0, 4, 4, 2, 2, 0, 1]);
        let csc = sample().to_csc();
        assert_eq!(csc.offsets, vec![0, 2, 3, 5, 5, 7]);
        assert_eq!(sample().in_degrees(), vec![2, 3, 2, 0]);
    }

    #[test]
    fn bytes_count_index_arrays() {
        let coo = sample();
        assert_eq!(coo.bytes(), 7 * 8);
        assert_eq!(coo.to_csr().bytes(), 4 * (5 + 7 + 7));
        assert_eq!(coo.to_csc().bytes(), 4 * (6 + 7 + 7));
    }

    #[test]
    fn empty_edge_set() {
        let coo = Coo {
            n_senders: 2,
            n_receivers: 3,
            senders: vec![],
            receivers: vec![],
        };
        assert_eq!(coo.to_csr().to_coo(), coo);
        assert_eq!(coo.to_csc().to_coo(), coo);
    }
}
