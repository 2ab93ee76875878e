#!/usr/bin/env bash
# Build the llama-cpp-python wheel once for a kind of board, to install on many devices of that
# kind without compiling llama.cpp on each (half an hour on a Pi 4, about an hour on a Jetson).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: deploy/build-wheel.sh [options]

Builds the llama-cpp-python version pinned in pyproject.toml, with the llama.cpp flags of a
board kind (deploy/boards.sh), into OUT/KIND/, and says how to install it elsewhere.

Options:
  --board KIND    pi5, pi4, pi3, jetson-orin, jetson-xavier, jetson-nano, jetson, x86-portable,
                  x86, arm64 or native (default: this board; on a PC, x86-portable)
  --out DIR       where the KIND folder goes (default: wheels/ in this checkout)
  --python PY     the Python whose pip builds it (default: python3)
  --dry-run       print the build command, build nothing
  -h, --help      this text

Environment: CMAKE_ARGS replaces the board's flags; CMAKE_BUILD_PARALLEL_LEVEL=N limits the
compile jobs (1 or 2 on a Pi with 2 GB or less).
Build on the oldest OS release among the devices (same Debian / Pi OS / JetPack release as
theirs is safest): the wheel links against its glibc, libstdc++, libgomp and CUDA.
USAGE
}

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/lib.sh
source "$repo/deploy/lib.sh"
# shellcheck source=deploy/boards.sh
source "$repo/deploy/boards.sh"

board=""
out="$repo/wheels"
python=python3
dry_run=0
while (($#)); do
  case "$1" in
    --board | --out | --python)
      [[ $# -ge 2 ]] || { echo "build-wheel.sh: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --board) board=$2 ;;
        --out) out=$2 ;;
        --python) python=$2 ;;
      esac
      shift
      ;;
    --board=*) board=${1#*=} ;;
    --out=*) out=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build-wheel.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ -z "$board" ]]; then
  board=$(board_resolve) || { echo "build-wheel.sh: unknown EDGELLM_BOARD $EDGELLM_BOARD" >&2; exit 2; }
  # A wheel for other PCs must not carry this CPU's newest instructions.
  [[ $board == x86 ]] && board=x86-portable
fi
board_cmake_args "$board" >/dev/null || {
  echo "build-wheel.sh: --board must be one of: $BOARD_KINDS, not $board" >&2
  exit 2
}

# The one pin, in pyproject.toml: the version daemon/engine/llama_compat.py was tested on.
spec=$(sed -n 's/^[[:space:]]*"\(llama-cpp-python==[^";]*\)".*/\1/p' "$repo/pyproject.toml" | head -n 1)
[[ -n "$spec" ]] || { echo "build-wheel.sh: no llama-cpp-python==VERSION in pyproject.toml" >&2; exit 1; }

mapfile -t build_env < <(board_build_env "$board")
dest="$out/$board"
model=$(board_model)
say "building $spec for $board (this machine: $(board_detect)${model:+, $model})"
from=""
[[ -v CMAKE_ARGS ]] && from=" (from the environment)"
say "llama.cpp ${build_env[0]}$from"
case "$board" in
  x86 | arm64 | native)
    say "native flags: the wheel runs only on CPUs with this one's instruction set" ;;
esac
run mkdir -p "$dest"
# --no-binary: compile it, never take a prebuilt wheel from an index. --no-cache-dir: pip would
# otherwise hand back a wheel it built before from the same sdist, with whatever flags it had.
run env "${build_env[@]}" "$python" -m pip wheel --no-deps --no-binary llama-cpp-python \
  --no-cache-dir --disable-pip-version-check -w "$dest" "$spec"

# What the wheel was built with and on, next to it: the devices should match.
info="$dest/BUILD-INFO.txt"
os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "${EDGELLM_SYSROOT:-}/etc/os-release" \
  2>/dev/null || true)
if [[ $dry_run -eq 1 ]]; then
  printf '+ write %s (board, flags, OS release, Python)\n' "$info"
else
  {
    echo "spec: $spec"
    echo "board: $board"
    echo "${build_env[0]}"
    echo "built on: ${model:-$(uname -m)}; ${os:-unknown OS}; $("$python" --version 2>&1)"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$info"
fi

cat <<MSG

Built into $dest. On each $board device, copy that folder and install from it:
  rsync -a $dest/ DEVICE:/tmp/wheels/
  sudo deploy/install.sh --pip-args "--find-links /tmp/wheels"      # the service
  PIP_FIND_LINKS=/tmp/wheels deploy/bootstrap.sh                     # a development venv
pip prefers the wheel in the folder to compiling the sdist (the other packages still come from
PyPI), so the install takes minutes. The devices need the OS release in $info.
MSG
