//! One version everywhere: the core crate, the binding crates, the Python package, both npm
//! packages (and the main one's pin on its prebuilt addon), the C header and `ld_version()`.

mod common;

use std::ffi::CStr;

fn read(path: &str) -> String {
    std::fs::read_to_string(common::repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn toml_version(path: &str, table: &str) -> String {
    let doc: toml::Table = read(path).parse().unwrap_or_else(|e| panic!("{path}: {e}"));
    doc[table]["version"].as_str().unwrap_or_else(|| panic!("{path}: no {table}.version")).to_string()
}

/// A JSON string field, found without a JSON parser: `"key": "value"` on one line.
fn json_string(path: &str, key: &str) -> String {
    let text = read(path);
    let needle = format!("\"{key}\": \"");
    let start = text.find(&needle).unwrap_or_else(|| panic!("{path}: no \"{key}\"")) + needle.len();
    text[start..].split('"').next().unwrap().to_string()
}

#[test]
fn every_package_has_the_core_version() {
    let version = env!("CARGO_PKG_VERSION");
    let found = [
        ("bindings/python/Cargo.toml", toml_version("bindings/python/Cargo.toml", "package")),
        ("bindings/node/Cargo.toml", toml_version("bindings/node/Cargo.toml", "package")),
        ("bindings/python/pyproject.toml", toml_version("bindings/python/pyproject.toml", "project")),
        ("bindings/node/package.json", json_string("bindings/node/package.json", "version")),
        ("bindings/node/package.json optionalDependencies", json_string("bindings/node/package.json", "lameduck-linux-x64-gnu")),
        ("bindings/node/npm/linux-x64-gnu/package.json", json_string("bindings/node/npm/linux-x64-gnu/package.json", "version")),
    ];
    for (what, v) in found {
        assert_eq!(v, version, "{what} has version {v}, Cargo.toml has {version}");
    }
    let header = read("include/lameduck.h");
    let parts: Vec<&str> = version.split('.').collect();
    for (name, part) in ["MAJOR", "MINOR", "PATCH"].iter().zip(&parts) {
        assert!(
            header.contains(&format!("#define LAMEDUCK_VERSION_{name} {part}\n")),
            "lameduck.h: LAMEDUCK_VERSION_{name} is not {part}"
        );
    }
    assert!(header.contains(&format!("#define LAMEDUCK_VERSION_STRING \"{version}\"\n")), "lameduck.h: LAMEDUCK_VERSION_STRING");
    // SAFETY: ld_version returns a static NUL-terminated string.
    let runtime = unsafe { CStr::from_ptr(lameduck::capi::ld_version()) };
    assert_eq!(runtime.to_str().unwrap(), version);
}
