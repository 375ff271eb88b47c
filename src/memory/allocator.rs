//! The host's measured memory: a counting global allocator, and what mimalloc does
//! with freed pages.
//!
//! The binary installs [`Counting`] around mimalloc (src/main.rs) and registers it
//! with [`register`]; library code reads the counters through [`current`], [`peak`]
//! and [`reset_peak`], which return `None` when no counting allocator is registered
//! (unit tests, other binaries linking the library). Counters are bytes requested
//! from the allocator (`Layout::size`), not the allocator's own overhead or the
//! process's resident set.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Live and peak bytes of one allocator.
#[derive(Debug, Default)]
pub struct Counters {
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl Counters {
    pub const fn new() -> Counters {
        Counters {
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn add(&self, bytes: usize) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        // A load first: the read-modify-write only when the peak moves.
        if now > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    #[inline]
    fn sub(&self, bytes: usize) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes allocated and not yet freed.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Highest `current` since the start or the last [`Counters::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak measurement from the current level; returns that level.
    pub fn reset_peak(&self) -> usize {
        let now = self.current();
        self.peak.store(now, Ordering::Relaxed);
        now
    }
}

/// A global allocator that forwards to `A` and counts live and peak bytes.
///
/// ```ignore
/// #[global_allocator]
/// static GLOBAL: Counting<mimalloc::MiMalloc> = Counting::new(mimalloc::MiMalloc);
/// ```
pub struct Counting<A: GlobalAlloc> {
    inner: A,
    counters: Counters,
}

impl<A: GlobalAlloc> Counting<A> {
    pub const fn new(inner: A) -> Self {
        Counting {
            inner,
            counters: Counters::new(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn current(&self) -> usize {
        self.counters.current()
    }

    pub fn peak(&self) -> usize {
        self.counters.peak()
    }

    pub fn reset_peak(&self) -> usize {
        self.counters.reset_peak()
    }
}

// SAFETY: every call forwards to `inner` with the caller's arguments unchanged; the
// counters are atomics and never allocate.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.inner.alloc(layout);
        if !p.is_null() {
            self.counters.add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.inner.alloc_zeroed(layout);
        if !p.is_null() {
            self.counters.add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.inner.dealloc(ptr, layout);
        self.counters.sub(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = self.inner.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                self.counters.add(new_size - layout.size());
            } else {
                self.counters.sub(layout.size() - new_size);
            }
        }
        p
    }
}

/// What the process's mimalloc does with freed pages (see [`set_freed_pages`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreedPages {
    /// Keep them: no page is zeroed twice; the resident size can stay above the live peak.
    Keep,
    /// Give them back after mimalloc's purge delay (1 s): the resident size follows the
    /// live bytes.
    Return,
}

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_e` in mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets what mimalloc does with freed pages. Call it before any other thread exists.
/// `MIMALLOC_PURGE_DELAY`, when set, decides instead.
///
/// Returning pages costs time: a training step frees and re-allocates gigabytes, and
/// the kernel zeroes every page given back when it is touched again (27% of the
/// 5-degree bar case's step). Keeping them costs resident memory above the live peak:
/// a 1-degree step in two patches with a counted peak of 3.04 GB reaches 4.07 GB RSS
/// keeping them, 3.42 GB returning them (docs/benchmarks.md). A run under a memory
/// budget cannot spend that.
pub fn set_freed_pages(policy: FreedPages) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() || policy == FreedPages::Return {
        return;
    }
    // SAFETY: sets one option before other threads exist; no memory is involved.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

static REGISTERED: OnceLock<&'static Counters> = OnceLock::new();

/// Makes `allocator` (the process's global allocator) the one [`current`], [`peak`]
/// and [`reset_peak`] read. The first registration wins.
pub fn register<A: GlobalAlloc>(allocator: &'static Counting<A>) {
    let _ = REGISTERED.set(allocator.counters());
}

/// True when a counting allocator is registered.
pub fn is_counting() -> bool {
    REGISTERED.get().is_some()
}

/// Live heap bytes, or None without a counting allocator.
pub fn current() -> Option<usize> {
    REGISTERED.get().map(|c| c.current())
}

/// Peak heap bytes since the last [`reset_peak`], or None without a counting allocator.
pub fn peak() -> Option<usize> {
    REGISTERED.get().map(|c| c.peak())
}

/// Starts a new peak measurement; returns the live bytes at that moment.
pub fn reset_peak() -> Option<usize> {
    REGISTERED.get().map(|c| c.reset_peak())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_live_and_peak_bytes() {
        static A: Counting<std::alloc::System> = Counting::new(std::alloc::System);
        let layout = Layout::from_size_align(1000, 8).unwrap();
        unsafe {
            let p = A.alloc(layout);
            let q = A.alloc_zeroed(layout);
            assert_eq!(A.current(), 2000);
            let q = A.realloc(q, layout, 3000);
            assert_eq!(A.current(), 4000);
            A.dealloc(p, layout);
            assert_eq!(A.current(), 3000);
            assert_eq!(A.peak(), 4000);
            assert_eq!(A.reset_peak(), 3000);
            assert_eq!(A.peak(), 3000);
            A.dealloc(q, Layout::from_size_align(3000, 8).unwrap());
        }
        assert_eq!(A.current(), 0);
        assert_eq!(A.peak(), 3000);
    }
}
