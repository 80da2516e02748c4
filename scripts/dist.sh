#!/usr/bin/env bash
# Builds every release artifact into dist/ (also: make dist), for Linux x86_64 with glibc 2.17
# or newer (manylinux2014), on any newer Linux machine: Rust links them with zig against
# glibc 2.17's symbols (cargo-zigbuild, maturin --zig; zig comes from PyPI's ziglang).
#
#   dist/python/lameduck-V-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
#   dist/python/lameduck-V.tar.gz                     the sdist (builds with Rust present)
#   dist/npm/lameduck-V.tgz                           the Node package (JS and types)
#   dist/npm/lameduck-linux-x64-gnu-V.tgz             its prebuilt addon, an optional dependency
#   dist/c/liblameduck-V-linux-x86_64.tar.gz          .so (with SONAME links), .a, header,
#                                                     lameduck.pc, start_server and its man page
#   dist/c/liblameduck_V_amd64.deb                    the same as a Debian package
#
# The tools (maturin, ziglang, cargo-zigbuild, auditwheel: scripts/dist-requirements.txt) go
# into the project venv (.venv); @napi-rs/cli into bindings/node/node_modules; help2man and
# dpkg-deb come from apt when missing. Every binary is checked to need nothing newer than
# GLIBC_2.17. tests/dist/check.sh installs each artifact on a machine without Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
TRIPLE=x86_64-unknown-linux-gnu
GLIBC=2.17
OUT=target/$TRIPLE/release
DIST=dist
STAGE=target/dist

. scripts/lib/tools.sh
need_tools dist help2man:help2man dpkg-deb:dpkg objdump:binutils

echo "== dist: release tools into .venv (maturin, zig, cargo-zigbuild, auditwheel)"
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r scripts/dist-requirements.txt
export PATH="$PWD/.venv/bin:$PATH"

rm -rf "$DIST" "$STAGE"
mkdir -p "$DIST/python" "$DIST/npm" "$DIST/c" "$STAGE"

# Refuses a binary that needs a glibc symbol newer than $GLIBC (it would not load there).
check_glibc() {
  local newest
  newest=$(objdump -T "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
  if [ "$(printf '%s\n%s\n' "$newest" "$GLIBC" | sort -V | tail -n 1)" != "$GLIBC" ]; then
    echo "dist: $1 needs GLIBC_$newest, newer than $GLIBC" >&2
    exit 1
  fi
  # A strong reference without a version is a libc function the 2.17 stubs do not have (the
  # loader would fail on an older glibc with "undefined symbol"); weak ones (Rust's std checks
  # for statx, getrandom, ...) and the host's own API (Python's, Node-API) are fine.
  local unversioned
  unversioned=$(objdump -T "$1" | awk '/\*UND\*/ && $2 != "w" && $0 !~ /GLIBC_/ {print $NF}' |
    grep -Ev '^(_?Py|napi_|node_api_)' || true)
  if [ -n "$unversioned" ]; then
    echo "dist: $1 needs symbols glibc $GLIBC does not have: $(echo $unversioned)" >&2
    exit 1
  fi
  echo "   $(basename "$1"): newest glibc symbol GLIBC_$newest"
}

echo "== dist: C library and start_server (cargo zigbuild, glibc $GLIBC)"
cargo zigbuild --release --target "$TRIPLE.$GLIBC" --lib --bin start_server
check_glibc "$OUT/liblameduck.so"
check_glibc "$OUT/start_server"
c_name=liblameduck-$VERSION-linux-x86_64
c_root=$PWD/$STAGE/$c_name
make --no-print-directory install NO_BUILD=1 OUT="$OUT" PREFIX="$c_root" >/dev/null
# std's debug sections make up a third of the static library; nobody debugs std from it.
strip --strip-debug "$c_root/lib/liblameduck.a"
# Relocatable: pkg-config finds the prefix from the .pc file's own place.
sed -i "s|$c_root|\${pcfiledir}/../..|g" "$c_root/lib/pkgconfig/lameduck.pc"
start_server_man() {
  help2man --no-info --no-discard-stderr --version-string="start_server $("$OUT/start_server" --version | cut -d' ' -f1) (lameduck $VERSION)" \
    --name="Server::Starter-compatible superdaemon for zero-downtime restarts" "$OUT/start_server"
}
install -d "$c_root/share/man/man1" "$c_root/share/doc/lameduck"
start_server_man > "$c_root/share/man/man1/start_server.1"
install -m 644 README.md LICENSE-MIT LICENSE-APACHE "$c_root/share/doc/lameduck/"
tar -C "$STAGE" --owner=0 --group=0 -czf "$DIST/c/$c_name.tar.gz" "$c_name"

echo "== dist: Debian package"
deb_root=$PWD/$STAGE/deb
make --no-print-directory install NO_BUILD=1 OUT="$OUT" PREFIX=/usr DESTDIR="$deb_root" >/dev/null
strip --strip-debug "$deb_root/usr/lib/liblameduck.a"
install -d "$deb_root/usr/share/man/man1" "$deb_root/usr/share/doc/lameduck" "$deb_root/DEBIAN"
start_server_man | gzip -9n > "$deb_root/usr/share/man/man1/start_server.1.gz"
install -m 644 LICENSE-MIT LICENSE-APACHE "$deb_root/usr/share/doc/lameduck/"
cat > "$deb_root/DEBIAN/control" <<CONTROL
Package: liblameduck
Version: $VERSION
Architecture: amd64
Maintainer: The lameduck authors <lameduck@localhost>
Depends: libc6 (>= $GLIBC)
Section: libs
Priority: optional
Installed-Size: $(du -sk "$deb_root/usr" | cut -f1)
Description: coordinated lame-duck shutdown and zero-downtime restarts
 liblameduck gives any server Go-lameduck-style graceful shutdown (serve,
 shutdown with a deadline, close) and socket hand-over upgrades, through a
 C ABI; with start_server, a Server::Starter-compatible superdaemon.
CONTROL
echo "activate-noawait ldconfig" > "$deb_root/DEBIAN/triggers"
dpkg-deb --root-owner-group --build "$deb_root" "$DIST/c/liblameduck_${VERSION}_amd64.deb" >/dev/null

# The Node addon right after the C library: both link through cargo-zigbuild's wrapper, so
# the addon reuses the dependencies just built (cargo rebuilds every unit whose linker
# changed, and maturin's zig linker is another one).
echo "== dist: Node packages (napi build -x: cargo-zigbuild, glibc $GLIBC)"
# The CLI is a devDependency; --ignore-scripts skips our install hook (no source build here).
(cd bindings/node && npm install --no-audit --no-fund --loglevel=error --ignore-scripts)
(cd bindings/node && npx napi build --platform --release -x --target "$TRIPLE.$GLIBC" --no-js --dts native.d.ts)
check_glibc bindings/node/lameduck.linux-x64-gnu.node
cp bindings/node/lameduck.linux-x64-gnu.node bindings/node/npm/linux-x64-gnu/
# Each package is packed as npm packs it (its "files"), then repacked with the licenses and
# without the source-checkout install hook: a published package needs no script (npm 11 would
# ask every user to approve it), and its addon comes from the platform package.
npm_dist=$PWD/$DIST/npm
npm_stage=$PWD/$STAGE/npm
for dir in bindings/node bindings/node/npm/linux-x64-gnu; do
  name=$(node -p "require('./$dir/package.json').name")
  mkdir -p "$npm_stage/$name"
  (cd "$dir" && npm pack --silent --ignore-scripts --pack-destination "$npm_stage" >/dev/null)
  tar -xzf "$npm_stage/$name-$VERSION.tgz" --strip-components=1 -C "$npm_stage/$name"
  cp LICENSE-MIT LICENSE-APACHE "$npm_stage/$name/"
  (cd "$npm_stage/$name" && npm pkg delete scripts.install && rm -rf scripts &&
    node -e "const p = require('./package.json'); p.files = [...p.files.filter((f) => !f.startsWith('scripts/')), 'LICENSE-MIT', 'LICENSE-APACHE']; require('fs').writeFileSync('package.json', JSON.stringify(p, null, 2) + '\\n')" &&
    npm pack --silent --pack-destination "$npm_dist" >/dev/null)
done

echo "== dist: Python wheel (maturin --zig, manylinux2014) and sdist"
maturin build --release --zig --compatibility manylinux2014 -m bindings/python/Cargo.toml -o "$DIST/python"
maturin sdist -m bindings/python/Cargo.toml -o "$DIST/python"
wheel=$(ls "$DIST"/python/*.whl)
auditwheel show "$wheel" | tee "$STAGE/auditwheel.txt"
grep -q '"manylinux_2_17_x86_64"' "$STAGE/auditwheel.txt"
wheel_so=$(python3 - "$wheel" "$STAGE/wheel" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".so"))
    print(whl.extract(name, sys.argv[2]))
PY
)
check_glibc "$wheel_so"

echo "== dist: done"
(cd "$DIST" && find . -type f -printf '%10s  %p\n' | sort -k2)
