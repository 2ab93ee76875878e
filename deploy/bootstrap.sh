#!/usr/bin/env bash
# Install what edgellm needs on Debian / Raspberry Pi OS: system packages, a venv, the package.
# Usage: deploy/bootstrap.sh [--test] [--wheels DIR|URL]
#   --test        adds the test tools
#   --wheels DIR  llama-cpp-python from this board's wheel in DIR (deploy/build-wheel.sh; a
#                 wheels/ folder in the checkout is used without asking): no compiler, no cmake.
#                 A URL: the wheels its folder listing links to, checked against their .sha256.
# Environment: EDGELLM_VENV (default: .venv in the checkout); EDGELLM_BOARD and CMAKE_ARGS as for
# install.sh (the llama.cpp build flags: docs/DEPLOY.md, "Builds for the boards").
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
wheels=""
while (($#)); do
  case "$1" in
    --test) extras="[test]" ;;
    --wheels)
      [[ $# -ge 2 ]] || { echo "bootstrap.sh: --wheels needs a directory or URL" >&2; exit 2; }
      wheels=$2
      shift
      ;;
    --wheels=*) wheels=${1#*=} ;;
    *) echo "bootstrap.sh: unknown option $1 (--test, --wheels DIR|URL)" >&2; exit 2 ;;
  esac
  shift
done
venv="${EDGELLM_VENV:-.venv}"

# shellcheck source=deploy/boards.sh
source deploy/boards.sh
board=$(board_resolve) || { echo "bootstrap.sh: unknown EDGELLM_BOARD $EDGELLM_BOARD" >&2; exit 2; }
# A wheel from build-wheel.sh: chosen, or refused with the name of the right one, before apt.
wheel=""
version=$(board_llama_spec .)
version=${version#*==}
[[ -z "$wheels" && -d wheels ]] && board_wheel_pick wheels "$board" "$version" >/dev/null 2>&1 &&
  wheels=wheels
if [[ $wheels == http://* || $wheels == https://* ]]; then
  wheels=$(board_wheels_fetch "$wheels" "$version") || exit 3
fi
if [[ -n "$wheels" ]]; then
  wheel=$(board_wheel_pick "$wheels" "$board" "$version" 2>/dev/null) || {
    echo "bootstrap.sh: $(board_wheel_pick "$wheels" "$board" "$version" 2>&1)" >&2
    exit 3
  }
fi

sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# mosquitto: the broker (and its clients, for the examples); a compiler and cmake build
# llama.cpp inside `pip install llama-cpp-python` unless a wheel was given.
missing=()
# The tests also lint the shell scripts, and drive `edgellm chat` in a real terminal (tmux).
[[ -n "$extras" ]] && ! command -v shellcheck >/dev/null 2>&1 && missing+=(shellcheck)
[[ -n "$extras" ]] && ! command -v tmux >/dev/null 2>&1 && missing+=(tmux)
command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
if [[ -z "$wheel" ]]; then
  command -v c++ >/dev/null 2>&1 || missing+=(build-essential)
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  [[ -e "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]] \
    || missing+=(python3-dev)
fi
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  echo "edgellm: installing system packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# llama-cpp-python compiles llama.cpp here the first time (minutes on a Pi); pip caches the wheel.
# The flags are the board's (deploy/boards.sh) unless CMAKE_ARGS is set; a wheel built once by
# deploy/build-wheel.sh is used instead with --wheels DIR (pip takes it for the pin).
mapfile -t build_env < <(board_build_env "$board")
model=$(board_model)
echo "edgellm: board $board${model:+ ($model)}; llama.cpp ${build_env[0]}"
if [[ -n "$wheel" ]]; then
  echo "edgellm: llama.cpp from the wheel $wheel: nothing to compile"
else
  echo "edgellm: installing the package into $venv (the first time builds llama.cpp: a few minutes)"
fi
env "${build_env[@]}" "$venv/bin/python" -m pip install -q -e ".${extras}" ${wheel:+"$wheel"}
