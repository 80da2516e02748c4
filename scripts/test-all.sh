#!/usr/bin/env bash
# Runs every test: formatting and lints (cargo fmt, clippy), Rust unit and integration tests,
# the C tests (AddressSanitizer/UBSan, then valgrind), the C HTTP server tests, the install/pkg-config test, the header check,
# the release build (scripts/dist.sh into dist/), the Python package's tests (pytest, mypy
# --strict) on the dist wheel in a project venv (.venv), the Node package's tests (node --test)
# on the dist addon with its dependencies in bindings/node/node_modules, every dist artifact
# installed on a machine without Rust (tests/dist/check.sh), the fleets behind haproxy for the
# Python and Node examples (tests/fleet.rs; the C demo's ran with cargo test), and the
# conformance suite (tests/conformance) in all three languages.
# Installs what a fresh machine lacks (pkg-config, valgrind, binutils, wrk, Perl's start_server,
# haproxy, systemd's systemd-socket-activate and systemd-analyze) by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/tools.sh
need_tools test-all pkg-config:pkg-config valgrind:valgrind nm:binutils make:make wrk:wrk \
  start_server:libserver-starter-perl haproxy:haproxy systemd-socket-activate:systemd systemd-analyze:systemd

echo "== cargo fmt --check and cargo clippy -D warnings (the core, start_server, the tests)"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --check
else
  echo "rustfmt is not part of this Rust toolchain: formatting not checked" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --all-targets -- -D warnings 2>&1
else
  echo "clippy is not part of this Rust toolchain: lints not checked" >&2
fi

echo "== cargo test (Rust + C under AddressSanitizer/UBSan)"
cargo test --all-targets 2>&1

echo "== C tests again under valgrind"
LAMEDUCK_C_MODE=valgrind cargo test --test c_api --test c_http --test c_gate --test c_listen 2>&1

echo "== header is generated and committed"
if [ -d .git ] && [ -n "$(git status --porcelain -- include/lameduck.h)" ]; then
  echo "include/lameduck.h is stale: run cargo build and commit it" >&2
  git --no-pager diff -- include/lameduck.h | head -40 >&2
  exit 1
fi

echo "== dist: every release artifact into dist/ (scripts/dist.sh), built once and tested below"
bash scripts/dist.sh

echo "== Python: the dist wheel into the project venv, pytest, mypy --strict"
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r bindings/python/tests/requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps dist/python/lameduck-*.whl
.venv/bin/python -m mypy --strict bindings/python/python/lameduck examples/python
(cd bindings/python && ../../.venv/bin/python -m pytest -q -p no:cacheprovider tests)
# The README's YAML blocks again, now with the venv's PyYAML (cargo test above may have had none).
LAMEDUCK_PYTHON="$PWD/.venv/bin/python" cargo test --test readme yaml 2>&1

echo "== Node: npm install (the test dependencies; the addon is dist's), node --test"
# npm install, not npm ci: npm 11 leaves other platforms' optional packages out of the lockfile
# and then npm ci rejects it. npm install still follows the lockfile.
(cd bindings/node && npm install --no-audit --no-fund --loglevel=error && npm test)

echo "== fleets behind haproxy: the Python and Node examples (tests/fleet.rs; the C demo and the control ran above)"
LAMEDUCK_FLEET=python,node LAMEDUCK_FLEET_PYTHON="$PWD/.venv/bin/python" cargo test --test fleet -- --nocapture 2>&1

echo "== install checks: every dist/ artifact installed without Rust (tests/dist/check.sh)"
bash tests/dist/check.sh

echo "== conformance: every scenario in tests/conformance/scenarios.toml, in C, Python and Node"
LAMEDUCK_CONFORMANCE=c,python,node LAMEDUCK_CONFORMANCE_PYTHON="$PWD/.venv/bin/python" \
  cargo test --test conformance -- --nocapture 2>&1

echo "== all tests passed"
