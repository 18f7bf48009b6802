//! Fuzzes the .npy parser: any byte string must give a tensor or an error, never
//! a panic, and a parsed tensor must survive a write/read round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = stitch_core::npy::read_npy(data, "fuzz input") {
        if let Ok(bytes) = stitch_core::npy::write_npy(&t) {
            let back = stitch_core::npy::read_npy(&bytes, "round trip").expect("a written npy reads back");
            assert_eq!(back.shape(), t.shape());
            assert_eq!(back.dtype(), t.dtype());
        }
    }
});
