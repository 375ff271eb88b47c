//! What the model sees per grid node beside the states: the forcings at a window's
//! input times and target time (computed, see `data::forcings`) and the static fields
//! (the same for every window). Training batches, rollouts and forecasts take them from
//! here, so every path feeds the model the same features.

use crate::data::forcings::{Forcing, ForcingCalculator, NodePlace};
use crate::data::time::{Calendar, Instant};
use crate::model::row_kernels::fill_rows;

/// The extra inputs of the graph's grid nodes.
pub struct NodeExtras {
    forcings: ForcingCalculator,
    /// Where each graph grid node is.
    places: Vec<NodePlace>,
    /// Seconds from one model state to the next (data step x lead steps).
    model_step: i64,
    /// `[node][static_width]`: each static field's normalised value, then its flags.
    statics: Vec<f32>,
    static_width: usize,
}

impl NodeExtras {
    /// `forcings` in `calendar` at nodes `lat_lon`, states `model_step` seconds apart;
    /// `statics` holds `static_width` features per node (empty for none).
    pub fn new(
        forcings: &[Forcing],
        calendar: Calendar,
        model_step: i64,
        lat_lon: Vec<(f64, f64)>,
        (statics, static_width): (Vec<f32>, usize),
    ) -> NodeExtras {
        debug_assert_eq!(statics.len(), lat_lon.len() * static_width);
        NodeExtras {
            forcings: ForcingCalculator::new(forcings, calendar, model_step),
            places: lat_lon
                .iter()
                .map(|&(lat, lon)| NodePlace::new(lat, lon))
                .collect(),
            model_step,
            statics,
            static_width,
        }
    }

    /// No forcings and no static fields (benchmarks and synthetic exports).
    pub fn none(nodes: usize) -> NodeExtras {
        NodeExtras::new(
            &[],
            Calendar::ProlepticGregorian,
            0,
            vec![(0.0, 0.0); nodes],
            (Vec::new(), 0),
        )
    }

    /// Features per node for windows of `input_steps` states.
    pub fn width(&self, input_steps: usize) -> usize {
        self.forcings.width() * (input_steps + 1) + self.static_width
    }

    pub fn model_step(&self) -> i64 {
        self.model_step
    }

    /// `[window][node][width]` for windows whose times are `times[i]`: the input times,
    /// oldest first, then the target time. Nodes are filled on candle's worker pool.
    pub fn for_windows(&self, times: &[Vec<Instant>]) -> Vec<f32> {
        let Some(first) = times.first() else {
            return Vec::new();
        };
        let width = self.width(first.len() - 1);
        let nodes = self.places.len();
        let mut out = vec![0f32; times.len() * nodes * width];
        let (f_width, s_width) = (self.forcings.width(), self.static_width);
        for (window, block) in times
            .iter()
            .zip(out.chunks_exact_mut((nodes * width).max(1)))
        {
            let at: Vec<_> = window.iter().map(|&t| self.forcings.at(t)).collect();
            let work = nodes * width * 16;
            fill_rows(block, width, work, |node, row| {
                for (k, forcings) in at.iter().enumerate() {
                    forcings
                        .fill_node(&self.places[node], &mut row[k * f_width..(k + 1) * f_width]);
                }
                let statics = &self.statics[node * s_width..(node + 1) * s_width];
                row[width - s_width..].copy_from_slice(statics);
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::time::DateTime;

    #[test]
    fn windows_hold_the_forcings_of_each_time_then_the_static_fields() {
        let cal = Calendar::ProlepticGregorian;
        let t = |h: u32| {
            DateTime {
                year: 2020,
                month: 1,
                day: 1,
                hour: h,
                minute: 0,
                second: 0,
            }
            .to_instant(cal)
        };
        let extras = NodeExtras::new(
            &[Forcing::LocalTime],
            cal,
            6 * 3600,
            vec![(0.0, 0.0), (0.0, 90.0)],
            (vec![0.5, 1.0, -0.5, 0.0], 2),
        );
        assert_eq!(extras.width(2), 2 * 3 + 2);
        let out = extras.for_windows(&[vec![t(0), t(6), t(12)]]);
        let rows: Vec<&[f32]> = out.chunks(8).collect();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        // Node 0 at 0 E: midnight, 06 h, noon; node 1 at 90 E: six hours later.
        assert!(
            close(rows[0], &[0.0, 1.0, 1.0, 0.0, 0.0, -1.0, 0.5, 1.0]),
            "{:?}",
            rows[0]
        );
        assert!(
            close(rows[1], &[1.0, 0.0, 0.0, -1.0, -1.0, 0.0, -0.5, 0.0]),
            "{:?}",
            rows[1]
        );
    }
}
