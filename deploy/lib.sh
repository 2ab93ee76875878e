# Shared by install.sh and uninstall.sh (sourced, not run): the dry-run runner and the root.
# shellcheck shell=bash

say() { printf 'edgellm: %s\n' "$*"; }

# Every change goes through run: printed under --dry-run, executed otherwise.
run() {
  if [[ ${dry_run:-0} -eq 1 ]]; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

# Sets root (where the tree goes, "" for the real system; a prefix install changes files only)
# and real_install (1 when it is the real system), then refuses a real install without root.
resolve_root() {
  local script=$1 prefix=$2
  root=""
  if [[ -n "$prefix" ]]; then
    root=$(realpath -m "$prefix")
    [[ "$root" == / ]] && root=""
  fi
  real_install=1
  [[ -n "$root" ]] && real_install=0
  if [[ $real_install -eq 1 && ${dry_run:-0} -eq 0 && $(id -u) -ne 0 ]]; then
    echo "$script: run as root (sudo $script), or use --prefix DIR or --dry-run" >&2
    exit 1
  fi
}
