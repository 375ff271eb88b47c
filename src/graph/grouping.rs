//! Edges grouped by one endpoint, as host index arrays: what the segment-sum kernels
//! walk (by receiver for sums into receivers, by sender for a gather's backward).

/// The edges of one edge set grouped by receiver, as host index arrays: the edges into
/// receiver `r` are `edge_ids[offsets[r]..offsets[r + 1]]` (COO edge ids, in COO order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrIndex {
    pub offsets: Vec<u32>,
    pub edge_ids: Vec<u32>,
}

impl CsrIndex {
    /// From the graph's CSR by receiver.
    pub fn from_csr(csr: &crate::graph::Csr) -> CsrIndex {
        CsrIndex {
            offsets: csr.offsets.clone(),
            edge_ids: csr.edge_ids.clone(),
        }
    }

    /// From COO receivers (`receivers[e]` < `n_receivers`), grouping stably.
    pub fn from_receivers(receivers: &[u32], n_receivers: usize) -> CsrIndex {
        let mut offsets = vec![0u32; n_receivers + 1];
        for &r in receivers {
            offsets[r as usize + 1] += 1;
        }
        for r in 0..n_receivers {
            offsets[r + 1] += offsets[r];
        }
        let mut next: Vec<u32> = offsets[..n_receivers].to_vec();
        let mut edge_ids = vec![0u32; receivers.len()];
        for (e, &r) in receivers.iter().enumerate() {
            edge_ids[next[r as usize] as usize] = e as u32;
            next[r as usize] += 1;
        }
        CsrIndex { offsets, edge_ids }
    }

    pub fn n_receivers(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn n_edges(&self) -> usize {
        self.edge_ids.len()
    }

    /// Host bytes of the two index arrays.
    pub fn bytes(&self) -> usize {
        4 * (self.offsets.len() + self.edge_ids.len())
    }

    /// `copies` disjoint copies (the block-diagonal batch graph): copy `b`'s receivers
    /// and edges are offset by `b * n_receivers` and `b * n_edges`.
    pub fn replicated(&self, copies: usize) -> CsrIndex {
        let (n, e) = (self.n_receivers(), self.n_edges() as u32);
        let mut offsets = Vec::with_capacity(copies * n + 1);
        let mut edge_ids = Vec::with_capacity(copies * self.n_edges());
        for b in 0..copies as u32 {
            offsets.extend(self.offsets[..n].iter().map(|&o| o + b * e));
            edge_ids.extend(self.edge_ids.iter().map(|&id| id + b * e));
        }
        offsets.push(copies as u32 * e);
        CsrIndex { offsets, edge_ids }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_index_from_receivers_and_replicated() {
        let c = CsrIndex::from_receivers(&[1, 0, 1, 1, 2], 4);
        assert_eq!(c.offsets, vec![0, 1, 4, 5, 5]);
        assert_eq!(c.edge_ids, vec![1, 0, 2, 3, 4]);
        let r = c.replicated(2);
        assert_eq!(r.offsets, vec![0, 1, 4, 5, 5, 6, 9, 10, 10]);
        assert_eq!(r.edge_ids, vec![1, 0, 2, 3, 4, 6, 5, 7, 8, 9]);
        let rec: Vec<u32> = [1u32, 0, 1, 1, 2, 5, 4, 5, 5, 6].to_vec();
        assert_eq!(CsrIndex::from_receivers(&rec, 8), r);
    }
}
