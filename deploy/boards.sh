# Which board this is, and the llama.cpp CMake flags that build llama-cpp-python for it.
# shellcheck shell=bash
# Sourced by install.sh, bootstrap.sh and build-wheel.sh. Only functions: they read files under a
# root and print; they change nothing. The root is EDGELLM_SYSROOT (default /), so the tests can
# point the detection at a fake /proc/device-tree; the machine is EDGELLM_MACHINE (default
# `uname -m`). docs/DEPLOY.md ("Builds for the boards") has the table of kinds and flags.
#
# The flags are llama.cpp's (the copy vendored in llama-cpp-python 0.3.36: ggml 0.25.x):
#   GGML_NATIVE          ON (llama.cpp's default) compiles for the CPU that builds: -march=native on
#                        x86, -mcpu=native plus probed dotprod/i8mm/sve on Arm. Right for a build
#                        on the device that runs it; wrong for a wheel that other devices run, and
#                        wrong under qemu (it sees the emulator's CPU). OFF makes the next
#                        flags count.
#   GGML_CPU_ARM_ARCH    with GGML_NATIVE=OFF, passed as -march= to every CPU source
#                        (ggml/src/ggml-cpu/CMakeLists.txt).
#   GGML_AVX2, _FMA ...  with GGML_NATIVE=OFF, each adds its -m flag (same file).
#   GGML_CUDA            the CUDA backend (llama.cpp docs/build.md, "CUDA").
#   CMAKE_CUDA_ARCHITECTURES  the GPU's compute capability. Without it ggml builds for the GPU it
#                        finds when GGML_NATIVE=ON, otherwise a list of desktop architectures
#                        (ggml/src/ggml-cuda/CMakeLists.txt) that takes far longer to compile and
#                        has no Tegra code: 87 Orin, 72 Xavier, 53 Nano/TX1.
# Not set, left at llama.cpp's defaults: GGML_OPENMP=ON (the wheel then needs libgomp1 on the
# device), GGML_LLAMAFILE=ON, GGML_CPU_REPACK=ON. Not used: GGML_BACKEND_DL with
# GGML_CPU_ALL_VARIANTS (one wheel, the best CPU variant picked at run time): llama-cpp-python
# 0.3.36 does not call ggml_backend_load_all(), so such a build finds no backend
# (abetlen/llama-cpp-python#2069). GGML_CPU_KLEIDIAI: downloads its sources at configure time.

# Every kind board_cmake_args knows, for --help texts and argument checks.
# shellcheck disable=SC2034  # read by the scripts that source this file
BOARD_KINDS="pi5 pi4 pi3 jetson-orin jetson-xavier jetson-nano jetson x86 x86-portable arm64 arm64-portable native"

# A device-tree file with its NUL separators turned into newlines ("" when absent).
_board_dt() {
  local file="${EDGELLM_SYSROOT:-}/proc/device-tree/$1"
  [[ -r "$file" ]] && tr '\0' '\n' <"$file"
  return 0
}

# The board's model string, as the device tree gives it ("" on a PC).
board_model() {
  _board_dt model | head -n 1
}

# The kind of board under EDGELLM_SYSROOT: one of BOARD_KINDS (never a -portable one or native).
board_detect() {
  local model compatible machine
  model=$(board_model)
  compatible=$(_board_dt compatible)
  machine=${EDGELLM_MACHINE:-$(uname -m)}
  # A Jetson: the L4T release file, the SoC in the device tree (which names the GPU), or the
  # model string (what daemon/governor/boards.py goes by, so the two agree).
  if [[ -e "${EDGELLM_SYSROOT:-}/etc/nv_tegra_release" || $model == *Jetson* ]] ||
    grep -q '^nvidia,tegra' <<<"$compatible"; then
    if grep -qx 'nvidia,tegra234' <<<"$compatible" || [[ $model == *Orin* ]]; then
      echo jetson-orin
    elif grep -qx 'nvidia,tegra194' <<<"$compatible" || [[ $model == *Xavier* ]]; then
      echo jetson-xavier
    elif grep -qx 'nvidia,tegra210' <<<"$compatible"; then
      echo jetson-nano # and the TX1: the same Tegra X1
    else
      echo jetson # TX2 (tegra186), Thor, or a release this list does not know: native flags
    fi
    return 0
  fi
  # The Pi kinds are 64-bit builds: a 32-bit Raspberry Pi OS (armv7l) falls through to native.
  if [[ $model == "Raspberry Pi"* && ($machine == aarch64 || $machine == arm64) ]]; then
    case "$model" in
      # "Raspberry Pi 5 Model B", "Raspberry Pi 500", "Raspberry Pi Compute Module 5"
      "Raspberry Pi 5"* | "Raspberry Pi Compute Module 5"*) echo pi5; return 0 ;;
      "Raspberry Pi 4"* | "Raspberry Pi Compute Module 4"*) echo pi4; return 0 ;;
      "Raspberry Pi 3"* | "Raspberry Pi Compute Module 3"* | "Raspberry Pi Zero 2"*)
        echo pi3
        return 0
        ;;
    esac
  fi
  case "$machine" in
    x86_64 | amd64) echo x86 ;;
    aarch64 | arm64) echo arm64 ;;
    *) echo native ;;
  esac
}

# Whether this Arm userland runs under qemu-user: QEMU_CPU is set, or /proc/cpuinfo is not an
# Arm one (qemu-user passes the host's through: an x86 "flags" line, no "CPU implementer").
board_emulated() {
  [[ ${EDGELLM_MACHINE:-$(uname -m)} == aarch64 || ${EDGELLM_MACHINE:-} == arm64 ]] || return 1
  [[ -n "${QEMU_CPU:-}" ]] && return 0
  local info="${EDGELLM_SYSROOT:-}/proc/cpuinfo"
  [[ -r $info ]] && ! grep -q '^CPU implementer' "$info" && grep -q '^flags' "$info"
}

# The CMAKE_ARGS that build llama.cpp for a kind; fails (status 2) on a kind it does not know.
board_cmake_args() {
  # Cortex-A76 (Pi 5) and Cortex-A78AE (Orin) are Armv8.2-A with the dot-product (SDOT/UDOT,
  # what the quantised matmul kernels use) and half-precision vector instructions:
  # /proc/cpuinfo lists asimddp and asimdhp.
  local a76="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16"
  # Cortex-A72 (Pi 4), A53 (Pi 3) and A57 (Nano) are plain Armv8-A: NEON, no dotprod. A wheel
  # built with +dotprod dies of SIGILL on them.
  local a72="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a"
  case "$1" in
    pi5) echo "$a76" ;;
    # arm64-portable: the same Armv8-A baseline for any 64-bit Arm board (a wheel for all).
    pi4 | pi3 | arm64-portable) echo "$a72" ;;
    # CUDA first: on a Jetson the GPU does the work once model.n_gpu_layers is set.
    jetson-orin) echo "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=87 $a76" ;;
    # Carmel (Xavier) is Armv8.2-A with fp16 but without dotprod (no asimddp in /proc/cpuinfo).
    jetson-xavier)
      echo "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=72 -DGGML_NATIVE=OFF" \
        "-DGGML_CPU_ARM_ARCH=armv8.2-a+fp16"
      ;;
    jetson-nano) echo "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=53 $a72" ;;
    # An unknown Jetson: GGML_NATIVE=ON picks this CPU and, with CMake 3.24+, this GPU.
    jetson) echo "-DGGML_CUDA=on" ;;
    # x86-64-v3 (Intel Haswell 2013 and later, AMD Zen): a wheel for many PCs. A CPU without AVX2
    # (Atom, Celeron J/N before 2021, Pentium Silver) needs a native build.
    x86-portable)
      echo "-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON" \
        "-DGGML_F16C=ON -DGGML_BMI2=ON"
      ;;
    # A 64-bit Arm board with no device tree: under qemu-user GGML_NATIVE would build for what
    # the compiler probes there (the emulator, not a board), so the Armv8-A baseline instead.
    arm64) if board_emulated; then echo "$a72"; else echo "-DGGML_NATIVE=ON"; fi ;;
    # Built on the machine that runs it: llama.cpp's own detection is the best choice.
    x86 | native) echo "-DGGML_NATIVE=ON" ;;
    *) return 2 ;;
  esac
}

# True for the kinds that build with CUDA (and need the systemd GPU drop-in).
board_is_jetson() {
  [[ $1 == jetson || $1 == jetson-* ]]
}

# The environment for `pip install` / `pip wheel` on a kind, one NAME=VALUE a line. A CMAKE_ARGS
# (or CUDACXX) the user set, even empty, wins over the board's.
board_build_env() {
  local kind=$1 args
  if [[ -v CMAKE_ARGS ]]; then
    args=$CMAKE_ARGS
  else
    args=$(board_cmake_args "$kind") || return 2
  fi
  echo "CMAKE_ARGS=$args"
  if board_is_jetson "$kind"; then
    # JetPack installs nvcc in /usr/local/cuda/bin and leaves it off the PATH.
    echo "CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}"
    echo "PATH=/usr/local/cuda/bin:$PATH"
  fi
}

# EDGELLM_BOARD (a kind, or the older cpu|pi|jetson) if set, else the detected kind.
board_resolve() {
  local kind=${EDGELLM_BOARD:-}
  case "$kind" in
    "") board_detect ;;
    cpu | pi) echo native ;; # the names before the kinds: both meant a native CPU build
    *)
      board_cmake_args "$kind" >/dev/null || return 2
      echo "$kind"
      ;;
  esac
}

# The pinned llama-cpp-python requirement in pyproject.toml under $1 (llama-cpp-python==0.3.36):
# the version daemon/engine/llama_compat.py was tested on.
board_llama_spec() {
  sed -n 's/^[[:space:]]*"\(llama-cpp-python==[^";]*\)".*/\1/p' "$1/pyproject.toml" | head -n 1
}

# The kind a wheel from build-wheel.sh was built for: its version label, dots back to dashes
# (llama_cpp_python-0.3.36+x86.portable-py3-none-linux_x86_64.whl -> x86-portable); "" if none.
board_wheel_kind() {
  local version=${1##*/}
  version=${version#llama_cpp_python-}
  version=${version%%-*}
  [[ $version == *+* ]] && echo "${version#*+}" | tr . -
  return 0
}

# Whether a wheel built for kind $1 runs on board kind $2: the same kind, or a baseline build
# (Armv8-A runs on every 64-bit Arm board; x86-64-v3 on a PC with AVX2). A Jetson takes only its
# own: the others have no CUDA.
board_wheel_fits() {
  [[ $1 == "$2" ]] && return 0
  case "$2" in
    pi5 | pi4 | pi3 | arm64 | arm64-portable) [[ $1 == pi4 || $1 == pi3 || $1 == arm64-portable ]] ;;
    x86 | x86-portable | native)
      [[ $1 == x86-portable ]] && grep -qw avx2 "${EDGELLM_SYSROOT:-}/proc/cpuinfo" 2>/dev/null
      ;;
    *) return 1 ;;
  esac
}

# How to make the wheel board kind $1 needs (the arguments of deploy/build-wheel.sh).
board_wheel_howto() {
  case "$1" in
    pi5 | pi4 | pi3 | arm64-portable) echo "--cross $1 (on any x86-64 machine) or --board $1 (here)" ;;
    arm64) echo "--cross arm64-portable (on any x86-64 machine) or --board arm64 (here)" ;;
    x86 | x86-portable | native) echo "--board x86-portable (on any x86-64 machine)" ;;
    *) echo "--board $1 (on the device)" ;;
  esac
}

# --wheels URL: the wheels of version $2 for this machine's platform that the index page at $1
# links to (a web server's folder listing of build-wheel.sh's output), each checked against its
# .sha256, fetched into a new temporary folder whose path is printed for board_wheel_pick
# (deploy/wheel_fetch.py: python3's standard library, since a minimal Debian has no curl).
# Status 3 with the reason on stderr when it cannot.
board_wheels_fetch() {
  local plat
  case "${EDGELLM_MACHINE:-$(uname -m)}" in
    aarch64 | arm64) plat=linux_aarch64 ;;
    *) plat=linux_$(uname -m) ;;
  esac
  python3 "$(dirname "${BASH_SOURCE[0]}")/wheel_fetch.py" "$1" "$2" "$plat"
}

# The llama-cpp-python wheel for board kind $2 under $1 (a folder, searched two levels deep, or a
# .whl file) with version $3: the kind's own first, else a baseline one that fits. Status 3, and
# the wheel to build on stderr, when none fits: a wrong wheel is refused before pip sees it.
board_wheel_pick() {
  local where=$1 kind=$2 version=$3 plat w wk best="" found=()
  case "${EDGELLM_MACHINE:-$(uname -m)}" in
    aarch64 | arm64) plat=linux_aarch64 ;;
    x86_64 | amd64) plat=linux_x86_64 ;;
    *) plat=linux_$(uname -m) ;;
  esac
  while IFS= read -r w; do
    found+=("${w##*/}")
    [[ ${w##*/} == "llama_cpp_python-$version"[+-]*"-$plat.whl" ]] || continue
    wk=$(board_wheel_kind "$w")
    if [[ $wk == "$kind" ]]; then
      best=$w
      break
    fi
    [[ -z $best && -n $wk ]] && board_wheel_fits "$wk" "$kind" && best=$w
  done < <(find "$where" -maxdepth 2 -name 'llama_cpp_python-*.whl' 2>/dev/null | sort)
  if [[ -n $best ]]; then
    echo "$best"
    return 0
  fi
  echo "no llama-cpp-python $version wheel for a $kind board ($plat) in $where" \
    "(found: ${found[*]:-none}); the one that fits is" \
    "llama_cpp_python-$version+${kind//-/.}-py3-none-$plat.whl:" \
    "deploy/build-wheel.sh $(board_wheel_howto "$kind")" >&2
  return 3
}
