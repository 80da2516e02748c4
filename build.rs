//! Generates `include/lameduck.h` with cbindgen and gives `liblameduck.so` its SONAME.
//!
//! The header is committed. cbindgen rewrites it only when its content changes, so a
//! current tree stays untouched; `tests/abi.rs` fails when the committed copy is stale.

use std::env;
use std::path::PathBuf;

/// The ABI generation: the SONAME is `liblameduck.so.<ABI>`. Bump on any incompatible change
/// to `include/lameduck.h`; keep in step with `LD_ABI_VERSION` in `src/capi/version.rs`.
const ABI_VERSION: u32 = 0;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");

    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" || target_os == "freebsd" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblameduck.so.{ABI_VERSION}");
    }

    if env::var_os("CARGO_FEATURE_CAPI").is_none() {
        return; // the bindings build the core without the C ABI: no header to write
    }
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml is readable and valid");
    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    let minor = env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
    let patch = env::var("CARGO_PKG_VERSION_PATCH").unwrap_or_default();
    config.after_includes = Some(format!(
        "\n/** Version of the header; compare with ld_version() at run time. */\n\
         #define LAMEDUCK_VERSION_MAJOR {major}\n\
         #define LAMEDUCK_VERSION_MINOR {minor}\n\
         #define LAMEDUCK_VERSION_PATCH {patch}\n\
         #define LAMEDUCK_VERSION_STRING \"{major}.{minor}.{patch}\"\n\
         /** One number for comparisons: MAJOR * 1000000 + MINOR * 1000 + PATCH. */\n\
         #define LAMEDUCK_VERSION_NUMBER ({major} * 1000000 + {minor} * 1000 + {patch})\n"
    ));
    match cbindgen::Builder::new().with_crate(&crate_dir).with_config(config).generate() {
        Ok(bindings) => {
            bindings.write_to_file(crate_dir.join("include/lameduck.h"));
        }
        // Keep the old header and let rustc report the real (syntax) error first.
        Err(err) => println!("cargo:warning=cbindgen could not generate include/lameduck.h: {err}"),
    }
}
