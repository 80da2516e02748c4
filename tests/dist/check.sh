#!/usr/bin/env bash
# Installs every artifact in dist/ (from scripts/dist.sh) the way a user would, on a machine
# without a Rust toolchain: cargo and rustc are taken out of PATH, CARGO_HOME and RUSTUP_HOME
# point at empty directories. Then:
#   Python: the wheel into fresh venvs of the oldest and newest Python found (3.9+), import,
#           a run ended by SIGTERM, mypy --strict on the examples of its PyPI README;
#   Node:   both npm tarballs into a fresh project: require, import, tsc --strict, a run ended
#           by SIGTERM, the framework helpers' subpaths (with no framework installed), and no
#           build tool among what got installed;
#   C:      the tarball unpacked into a fresh prefix, README's C quick start and a SIGTERM run
#           built with pkg-config only (shared and static); the .deb installed with dpkg -i
#           into a fresh root; start_server and its man page.
# With Rust present again: the sdist builds with pip, and `npm install ./bindings/node` from a
# fresh copy of the source tree builds the addon from source.
# Prints install times and sizes (the figures in README come from here).
set -euo pipefail
trap 'echo "check: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/../.."
repo=$PWD
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
dist=$repo/dist
for f in "python/lameduck-$VERSION.tar.gz" "npm/lameduck-$VERSION.tgz" "npm/lameduck-linux-x64-gnu-$VERSION.tgz" \
         "c/liblameduck-$VERSION-linux-x86_64.tar.gz" "c/liblameduck_${VERSION}_amd64.deb"; do
  [ -f "$dist/$f" ] || { echo "check: dist/$f is missing: run bash scripts/dist.sh first" >&2; exit 1; }
done
wheel=$(ls "$dist"/python/lameduck-"$VERSION"-cp39-abi3-manylinux*.whl)

work=$(mktemp -d "${TMPDIR:-/tmp}/lameduck-dist-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

# PATH without any directory that holds cargo or rustc.
norust_path=
IFS=: read -r -a dirs <<< "$PATH"
for d in "${dirs[@]}"; do
  [ -n "$d" ] && { [ -e "$d/cargo" ] || [ -e "$d/rustc" ]; } && continue
  norust_path=${norust_path:+$norust_path:}$d
done
mkdir -p "$work/empty-cargo" "$work/empty-rustup"
norust() { env PATH="$norust_path" CARGO_HOME="$work/empty-cargo" RUSTUP_HOME="$work/empty-rustup" "$@"; }
if norust sh -c 'command -v cargo || command -v rustc' >/dev/null; then
  echo "check: cannot hide cargo/rustc from PATH" >&2
  exit 1
fi

# Seconds (with ms) that a command took, for the install figures.
timed() { local t0 t1; t0=$(date +%s%N); "$@"; t1=$(date +%s%N); elapsed=$(( (t1 - t0) / 1000000 )); }
size() { du -sk "$@" | awk '{s += $1} END {printf "%.1f MB", s / 1024}'; }
report=()

echo "== check: Python wheel, without Rust"
pythons=()
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(9|[1-9][0-9])\.[0-9]+$' | sort -V); do
    pythons+=("$(pyenv root)/versions/$v/bin/python3")
  done
fi
if [ ${#pythons[@]} -gt 1 ]; then pythons=("${pythons[0]}" "${pythons[-1]}"); else pythons=("$(command -v python3)"); fi
for py in "${pythons[@]}"; do
  pyv=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  venv=$work/py$pyv
  norust "$py" -m venv "$venv"
  timed norust "$venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel"
  report+=("wheel, python $pyv: pip install ${elapsed} ms, installed $(size "$venv"/lib/python*/site-packages/lameduck)")
  norust "$venv/bin/python" tests/dist/smoke.py "$VERSION"
  norust "$venv/bin/python" -m pip install -q --disable-pip-version-check mypy
  # The PyPI README's examples that need nothing but lameduck, and the smoke server.
  mkdir -p "$work/readme-py$pyv"
  "$venv/bin/python" - "$repo/bindings/python/README.md" "$work/readme-py$pyv" <<'PY'
import re, sys
blocks = re.findall(r"^```python\n(.*?)^```", open(sys.argv[1]).read(), re.S | re.M)
# Those that import a framework (aiohttp, FastAPI, Flask, …) need it installed: not checked here.
framework = re.compile(r"^\s*(from|import) (aiohttp|fastapi|starlette|flask|uvicorn|hypercorn)\b", re.M)
for i, block in enumerate(blocks):
    if not framework.search(block):
        open(f"{sys.argv[2]}/example_{i}.py", "w").write(block)
PY
  norust "$venv/bin/python" -m mypy --strict --no-incremental tests/dist/smoke_server.py tests/dist/smoke.py "$work/readme-py$pyv"/*.py
done

echo "== check: npm packages, without Rust"
project=$work/node-project
mkdir -p "$project"
(cd "$project" && norust npm init -y >/dev/null)
timed norust npm install --prefix "$project" --no-audit --no-fund \
  "$dist/npm/lameduck-linux-x64-gnu-$VERSION.tgz" "$dist/npm/lameduck-$VERSION.tgz" > "$work/npm-install.log" 2>&1
cat "$work/npm-install.log"
# The packages run no install script: nothing to approve, nothing skipped, nothing built.
if grep -i -e warn -e "install-scripts" "$work/npm-install.log" >/dev/null; then echo "check: npm warned" >&2; exit 1; fi
grep '"install"' "$project/node_modules/lameduck/package.json" && exit 1
report+=("npm packages: npm install ${elapsed} ms, installed $(size "$project/node_modules")")
unexpected=$(ls "$project/node_modules" | grep -vx -e lameduck -e lameduck-linux-x64-gnu || true)
[ -z "$unexpected" ] || { echo "check: npm installed more than lameduck: $unexpected" >&2; exit 1; }
cp tests/dist/smoke.cjs tests/dist/smoke_server.mjs "$project/"
cp examples/node/server.ts "$project/"
(cd "$project" && norust node smoke.cjs "$VERSION")
(cd "$project" && norust node --input-type=module -e \
  "import { run, httpServer, LameDuckError, version } from 'lameduck'; if (typeof run !== 'function' || typeof httpServer !== 'function' || !(new LameDuckError('x') instanceof Error) || version !== '$VERSION') process.exit(1)")
tsc_deps=$(node -p "const d = require('./bindings/node/package.json').devDependencies; ['typescript@' + d.typescript, '@types/node@' + d['@types/node']].join(' ')")
# shellcheck disable=SC2086
norust npm install --prefix "$project" --no-audit --no-fund --loglevel=error --save-dev $tsc_deps
(cd "$project" && norust npx tsc --strict --noEmit --module nodenext --moduleResolution nodenext --target es2022 --types node server.ts)
# The framework helpers ship (lameduck/fastify, koa, express, nest, and as lameduck's own exports),
# load with no framework installed (the frameworks are the caller's), and are typed.
(cd "$project" && norust node -e "
const lameduck = require('lameduck')
for (const [sub, names] of Object.entries({ fastify: ['fastifyServer', 'runFastify'], koa: ['koaServer', 'runKoa'], express: ['expressServer', 'runExpress'], nest: ['nestServer', 'runNest'] })) {
  const m = require('lameduck/' + sub)
  for (const name of names) if (typeof m[name] !== 'function' || m[name] !== lameduck[name]) process.exit(1)
}
if (typeof lameduck.currentRunner !== 'function') process.exit(1)")
(cd "$project" && norust node --input-type=module -e \
  "import { runFastify } from 'lameduck/fastify'; import { runNest } from 'lameduck/nest'; import { currentRunner } from 'lameduck'; if (typeof runFastify !== 'function' || typeof runNest !== 'function' || currentRunner() !== null) process.exit(1)")
cp tests/dist/frameworks.ts "$project/"
(cd "$project" && norust npx tsc --strict --noEmit --module nodenext --moduleResolution nodenext --target es2022 --types node frameworks.ts)

# Without the prebuilt package (--omit=optional), require() says which platform is missing.
bare=$work/node-bare
mkdir -p "$bare"
(cd "$bare" && norust npm init -y >/dev/null)
norust npm install --prefix "$bare" --no-audit --no-fund --loglevel=error --omit=optional "$dist/npm/lameduck-$VERSION.tgz"
if message=$(cd "$bare" && norust node -e "require('lameduck')" 2>&1); then
  echo "check: require('lameduck') worked without its addon" >&2
  exit 1
fi
case $message in
  *"no native addon for linux-x64-gnu: its prebuilt package lameduck-linux-x64-gnu is not installed"*) ;;
  *) echo "check: unexpected error without the addon: $message" >&2; exit 1 ;;
esac

echo "== check: C tarball, without Rust"
prefix=$work/prefix
mkdir -p "$prefix"
timed tar -xzf "$dist/c/liblameduck-$VERSION-linux-x86_64.tar.gz" --strip-components=1 -C "$prefix"
report+=("C tarball: unpack ${elapsed} ms, installed $(size "$prefix")")
for f in lib/liblameduck.so lib/liblameduck.so.0 "lib/liblameduck.so.$VERSION" lib/liblameduck.a lib/pkgconfig/lameduck.pc \
         include/lameduck.h bin/start_server share/man/man1/start_server.1; do
  [ -e "$prefix/$f" ] || { echo "check: the tarball has no $f" >&2; exit 1; }
done
[ "$(readlink "$prefix/lib/liblameduck.so.0")" = "liblameduck.so.$VERSION" ]
norust "$prefix/bin/start_server" --version | grep >/dev/null "lameduck"
grep -q '^\.TH START_SERVER "1"' "$prefix/share/man/man1/start_server.1"
if command -v man >/dev/null 2>&1; then man -l "$prefix/share/man/man1/start_server.1" 2>/dev/null | grep >/dev/null -- '--signal-on-hup'; fi
# README's C quick start, exactly as printed (the first ```c block after "## C quick start").
awk '/^## C quick start/ {s = 1} s && /^```c$/ {p = 1; next} p && /^```$/ {exit} p' README.md > "$work/app.c"
[ -s "$work/app.c" ]
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
# shellcheck disable=SC2046
norust cc -std=c11 -Wall -Wextra -Werror "$work/app.c" $(pkg-config --cflags --libs lameduck) -Wl,-rpath,"$prefix/lib" -o "$work/app"
ldd "$work/app" | grep >/dev/null "liblameduck.so.0 => $prefix/lib/liblameduck.so.0"
# shellcheck disable=SC2046
norust cc -std=c11 -Wall -Wextra -Werror tests/c/pkgconfig_smoke.c $(pkg-config --cflags --libs lameduck) -Wl,-rpath,"$prefix/lib" -o "$work/smoke"
norust "$work/smoke" > "$work/smoke.out" 2> "$work/smoke.err"
grep -q "ld_run: ok" "$work/smoke.out"
grep -q "entering lame-duck mode" "$work/smoke.err"
# shellcheck disable=SC2046
norust cc -std=c11 -static-libgcc tests/c/pkgconfig_smoke.c $(pkg-config --cflags lameduck) "$prefix/lib/liblameduck.a" \
  $(pkg-config --libs-only-other --static lameduck) -lpthread -ldl -lm -o "$work/smoke-static"
if ldd "$work/smoke-static" | grep >/dev/null liblameduck; then echo "check: the static build links liblameduck.so" >&2; exit 1; fi
norust "$work/smoke-static" 2>/dev/null | grep >/dev/null "ld_run: ok"

echo "== check: Debian package, dpkg -i into a fresh root"
root=$work/debroot
mkdir -p "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/info"
cp /var/lib/dpkg/status "$root/var/lib/dpkg/status"   # so Depends: libc6 is checked against this machine
dpkg --root="$root" --force-script-chrootless --log=/dev/null -i "$dist/c/liblameduck_${VERSION}_amd64.deb" 2>&1 | grep -v "^dpkg: warning: files list" || true
dpkg --root="$root" -s liblameduck | grep >/dev/null "^Status: install ok installed"
PKG_CONFIG_PATH=$root/usr/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$root pkg-config --cflags lameduck | grep >/dev/null "$root/usr/include"
norust "$root/usr/bin/start_server" --version | grep >/dev/null lameduck
unset PKG_CONFIG_PATH

echo "== check: the sdist builds with pip (Rust present)"
if tar -tzf "$dist/python/lameduck-$VERSION.tar.gz" | grep -E '/(\.venv|node_modules|target|dist)/' >/dev/null; then
  echo "check: the sdist carries a build or tool directory" >&2
  exit 1
fi
sdist_venv=$work/sdist
"${PYTHON:-python3}" -m venv "$sdist_venv"
# One target directory for both source builds (they share the core's dependencies), kept
# between local runs; CI builds from nothing either way.
source_target=$repo/target/source-builds
timed env CARGO_TARGET_DIR="$source_target" "$sdist_venv/bin/python" -m pip install -q --disable-pip-version-check "$dist/python/lameduck-$VERSION.tar.gz"
report+=("sdist: pip install (builds with Rust) ${elapsed} ms")
"$sdist_venv/bin/python" -c "import lameduck, sys; assert lameduck.__version__ == sys.argv[1]" "$VERSION"

echo "== check: npm install ./bindings/node from a fresh copy of the source tree (Rust present)"
clone=$work/clone
mkdir -p "$clone"
if [ -d .git ]; then
  git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$clone" 2>/dev/null || true
else
  tar --exclude=./target --exclude=./dist --exclude=./.venv --exclude=node_modules --exclude='*.node' -cf - . | tar -xf - -C "$clone"
fi
[ -f "$clone/Cargo.toml" ] && [ -f "$clone/bindings/node/package.json" ]
project=$work/node-source-project
mkdir -p "$project"
(cd "$project" && npm init -y >/dev/null)
timed env CARGO_TARGET_DIR="$source_target" npm install --prefix "$project" --no-audit --no-fund --loglevel=error "$clone/bindings/node"
report+=("npm install ./bindings/node (builds with Rust) ${elapsed} ms")
(cd "$project" && node -e "const l = require('lameduck'); if (l.version !== '$VERSION') process.exit(1)")

echo "== check: every artifact installs and works"
printf '   %s\n' "${report[@]}"
