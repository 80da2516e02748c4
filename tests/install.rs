//! `make install PREFIX=…` installs the library, header and lameduck.pc; a C program built
//! with only `pkg-config --cflags --libs lameduck` against that prefix links and runs.

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn make_install_then_build_with_pkg_config() {
    let prefix = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("prefix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    let status = Command::new("make")
        .current_dir(common::repo())
        .args(["install", "--no-print-directory", "PROFILE=debug"])
        .arg(format!("PREFIX={}", prefix.display()))
        .status()
        .expect("make is installed");
    assert!(status.success());
    let lib = prefix.join("lib");
    for name in ["liblameduck.so", "liblameduck.so.0", "liblameduck.so.0.1.0", "liblameduck.a", "pkgconfig/lameduck.pc"] {
        assert!(lib.join(name).exists(), "{name} is not installed");
    }
    assert_eq!(std::fs::read_link(lib.join("liblameduck.so.0")).unwrap().to_str(), Some("liblameduck.so.0.1.0"));
    assert!(prefix.join("include/lameduck.h").exists());
    let version =
        std::process::Command::new(prefix.join("bin/start_server")).arg("--version").output().expect("start_server is installed");
    assert!(version.status.success() && String::from_utf8_lossy(&version.stdout).starts_with("0.35"));

    let pkg = Command::new("pkg-config")
        .args(["--cflags", "--libs", "lameduck"])
        .env("PKG_CONFIG_PATH", lib.join("pkgconfig"))
        .output()
        .expect("pkg-config is installed");
    assert!(pkg.status.success(), "{}", String::from_utf8_lossy(&pkg.stderr));
    let flags = String::from_utf8(pkg.stdout).unwrap();
    assert!(flags.contains(&format!("-I{}/include", prefix.display())), "{flags}");
    assert!(flags.contains("-llameduck"), "{flags}");

    let exe = prefix.join("pkgconfig_smoke");
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror"]).arg(common::repo().join("tests/c/pkgconfig_smoke.c"));
    cc.args(flags.split_whitespace()).arg(format!("-Wl,-rpath,{}", lib.display())).arg("-o").arg(&exe);
    assert!(cc.status().unwrap().success());
    // The program finds the library through its SONAME (liblameduck.so.0) in the prefix.
    let (status, stdout, stderr) = common::run_limited(Command::new(&exe), Duration::from_secs(60));
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ld_run: ok"));
    assert!(stderr.contains("lameduck: Received signal [terminated]; entering lame-duck mode for 3s"), "{stderr}");
}
