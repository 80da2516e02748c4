# Sourced by scripts/test-all.sh and scripts/dist.sh: installs missing system tools with apt-get.
#
#   need_tools WHO COMMAND:PACKAGE ...
#
# Installs the package of every COMMAND not on PATH (as root, with apt-get), or fails naming
# them. WHO prefixes the messages ("test-all", "dist").
need_tools() {
  local who=$1 pair missing=()
  shift
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== $who: installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "$who: missing tools: ${missing[*]} (apt-get install ${missing[*]}, or run as root)" >&2
    return 1
  fi
}
