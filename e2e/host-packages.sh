#!/usr/bin/env bash
# Makes sure the programs the lab and its tests drive are installed, installing the Debian
# packages that carry the missing ones when it can (root, apt-get present).
#
#   host-packages.sh PROGRAM:PACKAGE...
#
# Silent when everything is there. Otherwise it says what it installs and why, or, when it
# cannot install (not root, no apt-get, SWITCHYARD_NO_INSTALL set), names the packages to
# install and exits 3. Several callers at once (parallel tests) wait for each other on a
# lock.
set -euo pipefail

# A program on PATH (or in sbin), or, for a name starting with '/', a file that exists (a
# header of a -dev package, say).
have() {
  case $1 in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ;;
  esac
}

find_missing() {
  missing_programs=() missing_packages=()
  for pair in "$@"; do
    program=${pair%%:*} package=${pair#*:}
    if ! have "$program"; then
      missing_programs+=("$program")
      printf '%s\n' "${missing_packages[@]}" | grep -qx "$package" || missing_packages+=("$package")
    fi
  done
}
find_missing "$@"
[ ${#missing_programs[@]} -gt 0 ] || exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || [ -n "${SWITCHYARD_NO_INSTALL:-}" ]; then
  echo "switchyard: missing ${missing_programs[*]}: install the Debian packages ${missing_packages[*]} (apt-get install ${missing_packages[*]})" >&2
  exit 3
fi

# One installer at a time; whoever waited looks again, since the first may have installed it.
exec 9>/run/lock/switchyard-host-packages.lock
flock 9
find_missing "$@"
[ ${#missing_programs[@]} -gt 0 ] || exit 0
echo "switchyard: installing ${missing_packages[*]} with apt-get (for ${missing_programs[*]})" >&2
log=$(mktemp)
apt() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq "$@" >"$log" 2>&1 || {
    cat "$log" >&2
    echo "switchyard: apt-get $* failed (output above)" >&2
    exit 3
  }
}
# The package lists of a fresh machine are empty or stale: refresh them once first.
apt update
apt install -y --no-install-recommends "${missing_packages[@]}"

still=()
for program in "${missing_programs[@]}"; do have "$program" || still+=("$program"); done
if [ ${#still[@]} -gt 0 ]; then
  echo "switchyard: apt-get installed ${missing_packages[*]} but ${still[*]} is still not on PATH" >&2
  exit 3
fi
rm -f "$log"
echo "switchyard: installed ${missing_packages[*]}" >&2
