//! The C ABI: `liblameduck.so` and `include/lameduck.h` (generated from these doc comments).
//!
//! Conventions (the README says the same for C users):
//! - Opaque handles only (`ld_server`, `ld_options`, `ld_runner`, `ld_error`, `ld_context`,
//!   `ld_permit`),
//!   made by `*_new` and released by `*_free`; `*_free(NULL)` does nothing.
//! - Functions that can fail return an `ld_status` (0 = `LD_OK`, so `if (rc)` works) and, where
//!   there is more to say, take an optional `ld_error **error_out`: on failure it receives an
//!   error the caller frees with `ld_error_free`; on success it is set to NULL.
//! - Every pointer is checked: NULL gives `LD_NULL_ARGUMENT`, never a crash.
//! - No Rust panic crosses into C: each function catches it and returns `LD_PANIC`.
//! - This module is the only place with `#[no_mangle]` functions; it converts, the core decides.

#![allow(non_camel_case_types)]
// C callers cannot see Rust's `unsafe`: every pointer is NULL-checked and each function's doc
// states what a non-NULL pointer must point to. Only the `_free` functions, whose misuse
// (double free) cannot be detected, are marked `unsafe` with a `# Safety` section.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
#![deny(missing_docs)]

mod boundary;
mod error;
mod gate;
mod health;
mod listen;
mod options;
mod runner;
mod server;
mod version;

pub use error::*;
pub use gate::*;
pub use health::*;
pub use listen::*;
pub use options::*;
pub use runner::*;
pub use server::*;
pub use version::*;
