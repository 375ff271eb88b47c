//! Memory: measured (the counting allocator on the host, the CUDA memory pool on a
//! GPU), attributed ([`MemoryBreakdown`]) and predicted ([`planner`]: a training step's
//! peak, and the cheapest configuration within a budget).
//!
//! The binary installs [`Counting`] around mimalloc (src/main.rs) and registers it with
//! [`register`]; library code reads the counters through [`current`], [`peak`] and
//! [`reset_peak`] (or per device: [`current_on`], [`peak_on`], [`reset_peak_on`]), which
//! return `None` when no counting allocator is registered (unit tests, other binaries
//! linking the library).

mod allocator;
mod available;
mod breakdown;
mod device_pool;
pub mod planner;

pub use allocator::{
    current, is_counting, peak, register, reset_peak, set_freed_pages, Counters, Counting,
    FreedPages,
};
pub use available::{available_on, Available};
pub use breakdown::MemoryBreakdown;
pub use device_pool::{current_on, peak_on, reset_peak_on};
