//! The one call into HDF5 itself: turning off its error printing on reader threads.

/// Stops HDF5 printing its error stack on this thread.
///
/// netcdf-c silences HDF5's automatic error printing only on the thread that initialised
/// it; HDF5 keeps that setting per thread, so a reader thread (the prefetch loader) would
/// print a page of harmless diagnostics per file opened. The symbol is looked up at run
/// time so meshcast does not link a particular libhdf5 by name.
pub(super) fn silence_hdf5_errors_on_this_thread() {
    thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if DONE.with(|d| d.replace(true)) {
        return;
    }
    type SetAuto = unsafe extern "C" fn(i64, *const std::ffi::c_void, *mut std::ffi::c_void) -> i32;
    // SAFETY: dlsym with a NUL-terminated name; the symbol, if present, has HDF5's
    // `herr_t H5Eset_auto2(hid_t, H5E_auto2_t, void *)` signature (hid_t is 64-bit since HDF5 1.10).
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"H5Eset_auto2".as_ptr());
        if !sym.is_null() {
            let set_auto: SetAuto = std::mem::transmute(sym);
            set_auto(0, std::ptr::null(), std::ptr::null_mut());
        }
    }
}
