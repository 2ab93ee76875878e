#!/usr/bin/env bash
# Install edgellm as a systemd service on Debian 12, Raspberry Pi OS (bookworm) or Ubuntu/JetPack.
# Safe to run again: it upgrades the package and the unit, and keeps config, models and passwords.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: deploy/install.sh [options]      (as root, or with sudo)

Installs, from this checkout:
  /opt/edgellm/venv                         a venv with edgellm (builds llama.cpp: minutes)
  /etc/edgellm/config.yaml                  from config.yaml, model.dir set; kept if present
  /var/lib/edgellm/models                   the default model, fetched and verified
  /etc/systemd/system/edgellm.service       the unit (+ edgellm.service.d/jetson.conf on Jetson)
and a system user "edgellm"; then enables and starts the service.

Options:
  --dry-run          print every action, change nothing
  --prefix DIR       install under DIR instead of / (no apt, no user, no systemctl)
  --no-model         do not fetch the default model
  --with-broker      also install mosquitto as a LAN broker with passwords and an ACL
                     (deploy/mosquitto/), and log the daemon in as user "edgellm"
  --wheels DIR       install llama-cpp-python from the wheel for this board in DIR (made by
                     deploy/build-wheel.sh; a wheels/ folder in this checkout is used
                     without asking): nothing compiles, no compiler or cmake from apt.
                     A wheel for another board is refused, naming the one that fits.
  --wheels URL       the same from a web server's folder of those wheels: each is fetched with
                     its .sha256 and checked
  --pip-args ARGS    extra arguments for pip install
  -h, --help         this text

Environment:
  EDGELLM_BOARD=KIND  overrides the board detection: pi5, pi4, pi3, jetson-orin, jetson-xavier,
                      jetson-nano, jetson, x86, x86-portable, arm64, native (cpu and pi: native)
  CMAKE_ARGS=...      llama.cpp build flags instead of the board's (docs/DEPLOY.md has the table)
USAGE
}

repo=$(cd "$(dirname "$0")/.." && pwd)
dry_run=0
prefix=""
fetch_model=1
with_broker=0
pip_args=()
wheels=""

while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --prefix)
      [[ $# -ge 2 ]] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
      prefix=$2
      shift
      ;;
    --prefix=*) prefix=${1#*=} ;;
    --no-model) fetch_model=0 ;;
    --with-broker) with_broker=1 ;;
    --wheels)
      [[ $# -ge 2 ]] || { echo "install.sh: --wheels needs a directory or URL" >&2; exit 2; }
      wheels=$2
      shift
      ;;
    --wheels=*) wheels=${1#*=} ;;
    --pip-args)
      [[ $# -ge 2 ]] || { echo "install.sh: --pip-args needs a value" >&2; exit 2; }
      read -r -a pip_args <<<"$2"
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"
resolve_root install.sh "$prefix"

venv="$root/opt/edgellm/venv"
config_dir="$root/etc/edgellm"
config="$config_dir/config.yaml"
state_dir="$root/var/lib/edgellm"
models_dir="$state_dir/models"
unit_dir="$root/etc/systemd/system"
credstore="$root/etc/credstore"
credential="$credstore/edgellm.mqtt_password"
service_user=edgellm

# -- the board ------------------------------------------------------------------------------------
# shellcheck source=deploy/boards.sh
source "$(dirname "$0")/boards.sh"
board=$(board_resolve) || {
  echo "install.sh: EDGELLM_BOARD must be one of: $BOARD_KINDS (or cpu, pi), not $EDGELLM_BOARD" >&2
  exit 2
}
# The llama.cpp flags for this board (deploy/boards.sh); a CMAKE_ARGS set by the caller wins.
mapfile -t build_env < <(board_build_env "$board")
model=$(board_model)
from=""
[[ -v CMAKE_ARGS ]] && from=" (from the environment)"
say "board: $board${model:+ ($model)}; llama.cpp ${build_env[0]}$from"
# A wheel from build-wheel.sh: chosen (or refused) now, before anything is installed.
wheel=""
spec=$(board_llama_spec "$repo")
if [[ -z "$wheels" && -d "$repo/wheels" ]] &&
  board_wheel_pick "$repo/wheels" "$board" "${spec#*==}" >/dev/null 2>&1; then
  wheels="$repo/wheels"
fi
if [[ $wheels == http://* || $wheels == https://* ]]; then
  wheels=$(board_wheels_fetch "$wheels" "${spec#*==}") || exit 3
fi
if [[ -n "$wheels" ]]; then
  wheel=$(board_wheel_pick "$wheels" "$board" "${spec#*==}" 2>/dev/null) || {
    echo "install.sh: $(board_wheel_pick "$wheels" "$board" "${spec#*==}" 2>&1)" >&2
    exit 3
  }
  say "llama.cpp from the wheel $wheel: nothing to compile"
fi
say "installing into ${root:-/}$([[ $dry_run -eq 1 ]] && echo ' (dry run)')"

# -- system packages ------------------------------------------------------------------------------
find_python() {
  local py
  for py in python3 python3.13 python3.12 python3.11; do
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"
      return 0
    fi
  done
  return 1
}

python=$(find_python || true)
if [[ $real_install -eq 1 ]]; then
  packages=()
  # The compiler, cmake and Python's headers build llama.cpp; with a wheel none of them is needed.
  if [[ -n "$python" ]]; then
    pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  else
    # Ubuntu 22.04 (JetPack 6) ships 3.10 as python3; 3.11 is a package of its own.
    pyver=3.11
    packages+=(python3.11)
  fi
  packages+=("python$pyver-venv")
  [[ -z "$wheel" ]] && packages+=(build-essential cmake "python$pyver-dev")
  [[ $with_broker -eq 1 ]] && packages+=(mosquitto mosquitto-clients)
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "system packages: ${missing[*]}"
    run apt-get update -q
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
  [[ $dry_run -eq 1 ]] || python=$(find_python || true)
fi
if [[ -z "$python" ]]; then
  [[ $dry_run -eq 1 ]] || { echo "install.sh: edgellm needs Python 3.11 or newer" >&2; exit 1; }
  python=python3.11
fi

# -- the service user -----------------------------------------------------------------------------
if [[ $real_install -eq 1 ]] && ! getent passwd "$service_user" >/dev/null; then
  say "system user $service_user"
  run useradd --system --user-group --home-dir /var/lib/edgellm --no-create-home \
    --shell /usr/sbin/nologin --comment "edgellm daemon" "$service_user"
fi

# -- the venv and the package ---------------------------------------------------------------------
if [[ ! -x "$venv/bin/python" ]]; then
  say "venv $venv ($python)"
  run mkdir -p "$(dirname "$venv")"
  run "$python" -m venv "$venv"
fi
say "installing edgellm into $venv (the first time compiles llama.cpp: minutes, more on a Pi)"
# pip builds a source tree in place (build/, *.egg-info): build a copy, so that the checkout stays
# clean and may be read-only.
if [[ $dry_run -eq 1 ]]; then
  src=/tmp/BUILD-COPY
else
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
fi
run tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./wheels \
  --exclude='*.egg-info' --exclude=__pycache__ --exclude='./.*_cache' --exclude=./.hypothesis \
  -cf "$src/tree.tar" .
run tar -C "$src" -xf "$src/tree.tar"
# With a wheel, pip takes it for the pin (0.3.36+pi4 satisfies ==0.3.36) and builds nothing.
run env "${build_env[@]}" "$venv/bin/python" -m pip install -q \
  --disable-pip-version-check ${pip_args[@]+"${pip_args[@]}"} ${wheel:+"$wheel"} "$src"
if board_is_jetson "$board" && [[ $dry_run -eq 0 && -z "$wheel" ]] &&
  ! "$venv/bin/python" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())'; then
  # pip reused a CPU-only wheel from its cache: build llama-cpp-python again, with CUDA.
  spec=$("$venv/bin/python" -c 'from importlib.metadata import requires
print(next(r for r in requires("edgellm") if r.startswith("llama-cpp-python")))')
  say "rebuilding $spec with CUDA"
  run env "${build_env[@]}" "$venv/bin/python" -m pip install -q --no-cache-dir --force-reinstall \
    --no-deps ${pip_args[@]+"${pip_args[@]}"} "$spec"
fi
run install -m 0644 "$repo/docs/DEPLOY.md" "$root/opt/edgellm/DEPLOY.md"

# -- config ---------------------------------------------------------------------------------------
run mkdir -p "$config_dir"
if [[ -e "$config" ]]; then
  say "keeping $config"
else
  say "config $config (model.dir: $models_dir)"
  if [[ $dry_run -eq 1 ]]; then
    printf '+ write %s from %s with model.dir: %s\n' "$config" "$repo/config.yaml" "$models_dir"
  else
    tmp=$(mktemp "$config_dir/.config.XXXXXX")
    sed "s|^  dir: null  |  dir: $models_dir  |" "$repo/config.yaml" >"$tmp"
    grep -q "^  dir: $models_dir " "$tmp" || {
      rm -f "$tmp"
      echo "install.sh: config.yaml has no 'model: dir: null' line to set" >&2
      exit 1
    }
    mv "$tmp" "$config"
  fi
fi
# Not world-readable: the file may hold mqtt.password. The service reads it through its group.
run chmod 0640 "$config"
run chmod 0750 "$config_dir"
if [[ $real_install -eq 1 ]]; then
  run chown root:"$service_user" "$config_dir" "$config"
fi

# -- models ---------------------------------------------------------------------------------------
run mkdir -p "$models_dir"
if [[ $fetch_model -eq 1 ]]; then
  say "fetching the default model into $models_dir"
  run "$venv/bin/edgellm" model fetch -c "$config" --dir "$models_dir"
fi
if [[ $real_install -eq 1 ]]; then
  run chown -R "$service_user:$service_user" "$state_dir"
  run chmod 0750 "$state_dir"
fi

# -- the broker (optional) ------------------------------------------------------------------------
if [[ $with_broker -eq 1 ]]; then
  mosq="$root/etc/mosquitto"
  say "mosquitto drop-in $mosq/conf.d/edgellm.conf, ACL and password file"
  run mkdir -p "$mosq/conf.d" "$credstore"
  # Like config.yaml, both are the admin's to edit (TLS, more ACL lines): never overwritten.
  for pair in "edgellm.conf:conf.d/edgellm.conf:0644" "acl:edgellm.acl:0640"; do
    IFS=: read -r src dest mode <<<"$pair"
    if [[ -e "$mosq/$dest" ]]; then
      say "keeping $mosq/$dest"
    else
      run install -m "$mode" "$repo/deploy/mosquitto/$src" "$mosq/$dest"
    fi
  done
  run chmod 0700 "$credstore"
  if [[ ! -s "$credential" ]]; then
    # The daemon's broker password: random, kept root-only; systemd hands it to the service.
    say "new broker password for user edgellm in $credential"
    if [[ $dry_run -eq 1 ]]; then
      printf '+ write a random password to %s (mode 0600)\n' "$credential"
    else
      (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$credential")
    fi
  fi
  run touch "$mosq/edgellm.passwd"
  if [[ $dry_run -eq 1 ]]; then
    printf '+ mosquitto_passwd -b %s edgellm <password from %s>\n' "$mosq/edgellm.passwd" "$credential"
  else
    mosquitto_passwd -b "$mosq/edgellm.passwd" edgellm "$(cat "$credential")"
  fi
  run chmod 0640 "$mosq/edgellm.passwd"
  if [[ $real_install -eq 1 ]]; then
    # mosquitto reads these after dropping to its own user.
    run chown root:mosquitto "$mosq/edgellm.acl" "$mosq/edgellm.passwd"
  fi
  if grep -qs "^  username: null" "$config" || [[ $dry_run -eq 1 ]]; then
    run sed -i "s|^  username: null  |  username: edgellm|" "$config"
  fi
fi

# -- the unit -------------------------------------------------------------------------------------
run mkdir -p "$unit_dir"
run install -m 0644 "$repo/systemd/edgellm.service" "$unit_dir/edgellm.service"
if board_is_jetson "$board"; then
  say "Jetson: GPU access drop-in $unit_dir/edgellm.service.d/jetson.conf"
  run mkdir -p "$unit_dir/edgellm.service.d"
  run install -m 0644 "$repo/systemd/edgellm-jetson.conf" "$unit_dir/edgellm.service.d/jetson.conf"
fi

if [[ $real_install -eq 1 && -d /run/systemd/system ]]; then
  run systemctl daemon-reload
  if [[ $with_broker -eq 1 ]]; then
    run systemctl enable mosquitto
    run systemctl restart mosquitto
  fi
  run systemctl enable edgellm
  # restart, not start: a second run must pick up the new code and unit.
  run systemctl restart edgellm
  say "started. Check it with: systemctl status edgellm; journalctl -u edgellm -f"
else
  reason="systemd is not running"
  [[ $real_install -eq 0 ]] && reason="a --prefix install"
  say "not starting the service ($reason)"
fi
say "done"
