#!/usr/bin/env bash
# Build the llama-cpp-python wheel once for a kind of board, to install on many devices of that
# kind without compiling llama.cpp on each (half an hour on a Pi 4, about an hour on a Jetson).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: deploy/build-wheel.sh [options]

Builds the llama-cpp-python version pinned in pyproject.toml, with the llama.cpp flags of a
board kind (deploy/boards.sh), into OUT/KIND/, and says how to install it elsewhere. The wheel's
version carries the kind (0.3.36+pi5) and llama_cpp/edgellm-build.json inside it says what it
was built for; OUT/KIND/*.whl.sha256 has its checksum.

Options:
  --board KIND    pi5, pi4, pi3, jetson-orin, jetson-xavier, jetson-nano, jetson, x86-portable,
                  x86, arm64, arm64-portable or native (default: this board; on a PC,
                  x86-portable)
  --cross KIND    build for a 64-bit Arm board on an x86-64 machine, with Debian's cross
                  compiler (apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu):
                  pi5, pi4, pi3 or arm64-portable. Minutes instead of half an hour on a Pi.
  --sdist FILE    build from this llama-cpp-python sdist instead of downloading it (pip download
                  --no-binary :all: --no-deps llama-cpp-python==VERSION)
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

# The kinds a cross build makes: the Pis' CPUs need no vendor toolkit (a Jetson's CUDA does).
CROSS_KINDS="pi5 pi4 pi3 arm64-portable"
board=""
cross=0
sdist=""
out="$repo/wheels"
python=python3
dry_run=0
while (($#)); do
  case "$1" in
    --board | --cross | --out | --python | --sdist)
      [[ $# -ge 2 ]] || { echo "build-wheel.sh: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --board) board=$2 ;;
        --cross) board=$2 cross=1 ;;
        --sdist) sdist=$2 ;;
        --out) out=$2 ;;
        --python) python=$2 ;;
      esac
      shift
      ;;
    --board=*) board=${1#*=} ;;
    --cross=*) board=${1#*=} cross=1 ;;
    --sdist=*) sdist=${1#*=} ;;
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
plat=""
if [[ $cross -eq 1 ]]; then
  [[ " $CROSS_KINDS " == *" $board "* ]] || {
    echo "build-wheel.sh: --cross builds $CROSS_KINDS, not $board (build a Jetson's on the Jetson)" >&2
    exit 2
  }
  [[ ${EDGELLM_MACHINE:-$(uname -m)} == aarch64 ]] && {
    echo "build-wheel.sh: this machine is aarch64 already: use --board $board" >&2
    exit 2
  }
  if [[ $dry_run -eq 0 ]] && ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
    echo "build-wheel.sh: --cross needs the cross compiler:" \
      "apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu" >&2
    exit 1
  fi
  plat=linux_aarch64
fi

# The one pin, in pyproject.toml: the version daemon/engine/llama_compat.py was tested on.
spec=$(board_llama_spec "$repo")
[[ -n "$spec" ]] || { echo "build-wheel.sh: no llama-cpp-python==VERSION in pyproject.toml" >&2; exit 1; }

mapfile -t build_env < <(board_build_env "$board")
# The toolchain file names the cross compiler; the board's flags still pick the CPU.
[[ $cross -eq 1 ]] &&
  build_env[0]="${build_env[0]} -DCMAKE_TOOLCHAIN_FILE=$repo/deploy/toolchains/aarch64-linux-gnu.cmake"
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
if [[ -n "$sdist" ]]; then
  [[ -f "$sdist" || $dry_run -eq 1 ]] || { echo "build-wheel.sh: no sdist $sdist" >&2; exit 2; }
  [[ $(basename "$sdist") == "llama_cpp_python-${spec#*==}.tar.gz" ]] || {
    echo "build-wheel.sh: $sdist is not the pinned $spec" >&2
    exit 2
  }
fi
run mkdir -p "$dest"
if [[ $dry_run -eq 1 ]]; then
  raw=/tmp/BUILD-DIR
else
  raw=$(mktemp -d)
  trap 'rm -rf "$raw"' EXIT
fi
# --no-binary: compile it, never take a prebuilt wheel from an index. --no-cache-dir: pip would
# otherwise hand back a wheel it built before from the same sdist, with whatever flags it had.
t0=$SECONDS
run env "${build_env[@]}" "$python" -m pip wheel --no-deps --no-binary llama-cpp-python \
  --no-cache-dir --disable-pip-version-check -w "$raw" "${sdist:-$spec}"

# What the wheel was built with and on, next to it: the devices should match.
info="$dest/BUILD-INFO.txt"
os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "${EDGELLM_SYSROOT:-}/etc/os-release" \
  2>/dev/null || true)
built_on="${model:-$(uname -m)}; ${os:-unknown OS}"
[[ $cross -eq 1 ]] && built_on="cross-compiled on $built_on"
# The board and flags go into the wheel (its version label and llama_cpp/edgellm-build.json),
# the platform tag becomes the target's; a native build also records this CPU's features.
features=$(sed -n 's/^\(flags\|Features\)[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
if [[ $dry_run -eq 1 ]]; then
  printf '+ %s %s %s --board %s --plat %s --out %s\n' "$python" "$repo/deploy/wheel_stamp.py" \
    "$raw/*.whl" "$board" "${plat:-as-built}" "$dest"
  printf '+ write %s.sha256\n' "$dest/llama_cpp_python-${spec#*==}+$board-*.whl"
  printf '+ write %s (board, flags, OS release, Python)\n' "$info"
else
  raw_wheel=$(find "$raw" -name 'llama_cpp_python-*.whl' | head -n 1)
  wheel=$("$python" "$repo/deploy/wheel_stamp.py" "$raw_wheel" --board "$board" \
    --cmake-args="${build_env[0]#CMAKE_ARGS=}" ${plat:+--plat "$plat"} \
    --cpu-features="$features" --built-on="$built_on" --out "$dest")
  (cd "$dest" && sha256sum "$(basename "$wheel")" >"$(basename "$wheel").sha256")
  say "$(basename "$wheel"): $(cut -c1-16 "$wheel.sha256")..., built in $((SECONDS - t0)) s"
  {
    echo "spec: $spec"
    echo "board: $board"
    echo "${build_env[0]}"
    echo "wheel: $(basename "$wheel")"
    echo "built on: $built_on; $("$python" --version 2>&1)"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$info"
fi

cat <<MSG

Built into $dest. On each $board device, copy that folder and install from it:
  rsync -a $dest/ DEVICE:/tmp/wheels/
  (cd /tmp/wheels && sha256sum -c ./*.sha256)
  sudo deploy/install.sh --wheels /tmp/wheels     # the service: no compiler, no cmake
  deploy/bootstrap.sh --wheels /tmp/wheels        # a development venv
install.sh and bootstrap.sh refuse a wheel for another board and name the one that fits; the
other packages still come from PyPI, so the install takes minutes. The devices need the OS
release in $info.
MSG
