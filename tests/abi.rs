//! The C ABI as a promise: the committed header is current and documented, the shared
//! library has its SONAME and exports only `ld_*`, versions agree.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

fn header() -> String {
    std::fs::read_to_string(common::repo().join("include/lameduck.h")).unwrap()
}

fn cdylib() -> std::path::PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().join("liblameduck.so")
}

/// Function names declared in the header.
fn header_functions(header: &str) -> BTreeSet<String> {
    header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#') && !l.starts_with("typedef") && l.contains('('))
        .filter_map(|l| l.split('(').next()?.split_whitespace().last().map(|n| n.trim_start_matches('*').to_string()))
        .filter(|n| n.starts_with("ld_"))
        .collect()
}

#[test]
fn committed_header_is_current() {
    // build.rs regenerated include/lameduck.h before this test was compiled; it rewrites the
    // file only when the content changed, so any difference from git means a stale commit.
    let repo = common::repo();
    if !repo.join(".git").exists() {
        eprintln!("not a git checkout; skipping the staleness check");
        return;
    }
    let out =
        Command::new("git").current_dir(&repo).args(["status", "--porcelain", "--", "include/lameduck.h"]).output().unwrap();
    assert!(out.status.success());
    let status = String::from_utf8(out.stdout).unwrap();
    assert!(
        status.trim().is_empty(),
        "include/lameduck.h differs from the committed copy: regenerate (cargo build) and commit it\n{status}"
    );
}

#[test]
fn every_header_item_is_documented() {
    let header = header();
    let lines: Vec<&str> = header.lines().collect();
    let functions = header_functions(&header);
    assert!(functions.len() >= 30, "{functions:?}");
    for (i, line) in lines.iter().enumerate() {
        let declares = (!line.starts_with(' ')
            && !line.starts_with('/')
            && line.contains("ld_")
            && line.contains('(')
            && !line.starts_with('#'))
            || line.starts_with("typedef")
            || line.starts_with("#define LD_");
        if declares && i > 0 {
            assert!(lines[i - 1].trim_end().ends_with("*/"), "undocumented in the header: {line}");
        }
    }
}

#[test]
fn soname_and_only_ld_symbols_exported() {
    let so = cdylib();
    let readelf = Command::new("readelf").arg("-d").arg(&so).output().expect("readelf (binutils) is installed");
    let dynamic = String::from_utf8_lossy(&readelf.stdout);
    assert!(dynamic.contains("Library soname: [liblameduck.so.0]"), "{dynamic}");

    let nm = Command::new("nm").args(["-D", "--defined-only"]).arg(&so).output().expect("nm (binutils) is installed");
    let exported: BTreeSet<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            (parts.len() == 3 && parts[1] == "T").then(|| parts[2].to_string())
        })
        .collect();
    let foreign: Vec<&String> = exported.iter().filter(|s| !s.starts_with("ld_")).collect();
    assert!(foreign.is_empty(), "non-ld_ symbols exported: {foreign:?}");
    assert_eq!(exported, header_functions(&header()), "exported symbols and header functions differ");
}

#[test]
fn header_version_matches_cargo() {
    let header = header();
    let version = env!("CARGO_PKG_VERSION");
    assert!(header.contains(&format!("#define LAMEDUCK_VERSION_STRING \"{version}\"")));
    let mut parts = version.split('.');
    for name in ["MAJOR", "MINOR", "PATCH"] {
        assert!(header.contains(&format!("#define LAMEDUCK_VERSION_{name} {}", parts.next().unwrap())));
    }
    let abi = std::fs::read_to_string(common::repo().join("build.rs")).unwrap();
    assert!(abi.contains("const ABI_VERSION: u32 = 0;") && header.contains("#define LD_ABI_VERSION 0"));
}
