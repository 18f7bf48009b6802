//! Fuzzes the .npz reader (zip container + .npy entries): errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stitch_core::npy::read_npz(data, "fuzz input");
});
