//! Version numbers: of the library at run time, and of the ABI.

use std::ffi::c_char;

/// The ABI generation; the SONAME is `liblameduck.so.<LD_ABI_VERSION>`. Compare with
/// `ld_abi_version()` to detect a header/library mismatch.
pub const LD_ABI_VERSION: u32 = 0;

/// The library's version, e.g. "0.1.0" (compare with `LAMEDUCK_VERSION_STRING`). Static.
#[no_mangle]
pub extern "C" fn ld_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The library's ABI generation (compare with `LD_ABI_VERSION` from the header).
#[no_mangle]
pub extern "C" fn ld_abi_version() -> u32 {
    LD_ABI_VERSION
}
