#!/usr/bin/env bash
# The ARM check anyone can run on an x86-64 Debian 12 machine: cross-build the Pi 4 and Pi 5
# wheels, make a Debian 12 arm64 root (Raspberry Pi OS's base), install edgellm there from the
# wheels (no compiler), run the daemon under qemu-user as a Cortex-A72 (Pi 4) and a Cortex-A76
# (Pi 5), ask it over MQTT and HTTP, and check that the Pi 5 wheel on a Cortex-A72 stops with the
# clear CPU error (exit 5). Not part of CI: it takes tens of minutes. Each step's wall time goes
# to WORK/times.txt (docs/BENCHMARKS.md, "Issue 20", has a run's).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: sudo deploy/arm-check.sh [options]

Options:
  --work DIR      where the wheels, the arm64 root and the logs go (default /var/tmp/edgellm-arm)
  --steps LIST    some of: wheels root install a72 a76 mismatch tests (default: all, in that
                  order; tests: the board and CPU unit tests inside, as a Cortex-A72)
  --model FILE    the GGUF to serve (default: smollm2-135m from ~/.local/share/edgellm/models)
  -h, --help      this text

Needs root (debootstrap, chroot, mounts) and Debian's packages: qemu-user-static binfmt-support
debootstrap gcc-aarch64-linux-gnu g++-aarch64-linux-gnu mosquitto curl (it installs the missing
ones). It registers qemu-aarch64 with binfmt_misc (update-binfmts), which the whole machine sees.
Ports: a broker on 127.0.0.1:18830, the daemon's HTTP API on 127.0.0.1:18434.
USAGE
}

repo=$(cd "$(dirname "$0")/.." && pwd)
work=/var/tmp/edgellm-arm
steps="wheels root install a72 a76 mismatch tests"
model=""
while (($#)); do
  case "$1" in
    --work | --steps | --model)
      [[ $# -ge 2 ]] || { echo "arm-check.sh: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --work) work=$2 ;;
        --steps) steps=$2 ;;
        --model) model=$2 ;;
      esac
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "arm-check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for s in $steps; do
  [[ " wheels root install a72 a76 mismatch tests " == *" $s "* ]] ||
    { echo "arm-check.sh: unknown step $s" >&2; exit 2; }
done
[[ $(id -u) -eq 0 ]] || { echo "arm-check.sh: run as root (sudo)" >&2; exit 1; }
[[ $(uname -m) == x86_64 ]] || { echo "arm-check.sh: an x86-64 host checks ARM" >&2; exit 1; }

# shellcheck source=deploy/boards.sh
source "$repo/deploy/boards.sh"
spec=$(board_llama_spec "$repo")
version=${spec#*==}
rootfs="$work/root"
logs="$work/logs"
mqtt_port=18830
http_port=18434
mkdir -p "$work" "$logs"
times="$work/times.txt"
log() { printf 'arm-check: %s\n' "$*" | tee -a "$times"; }

# Runs "$@" as one named step and records its wall time.
step() {
  local name=$1 t0=$SECONDS
  shift
  log "step $name: start $(date -u +%H:%M:%S)"
  "$@"
  log "step $name: $((SECONDS - t0)) s"
}

host_packages() {
  local need=(qemu-user-static binfmt-support debootstrap gcc-aarch64-linux-gnu
    g++-aarch64-linux-gnu mosquitto curl) missing=() p
  for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  # A container may start without binfmt_misc mounted; qemu-user-static's entry runs aarch64 ELF
  # files through /usr/libexec/qemu-binfmt/aarch64-binfmt-P (copied into the root below).
  [[ -e /proc/sys/fs/binfmt_misc/register ]] ||
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64
}

do_wheels() {
  local sdist="$work/llama_cpp_python-$version.tar.gz" kind
  [[ -s "$sdist" ]] || python3 -m pip download -q --no-binary :all: --no-deps "$spec" -d "$work"
  for kind in pi4 pi5; do
    if compgen -G "$work/wheels/$kind/llama_cpp_python-$version+$kind-*.whl" >/dev/null; then
      log "wheel $kind: already built, kept"
      continue
    fi
    local t0=$SECONDS
    "$repo/deploy/build-wheel.sh" --cross "$kind" --sdist "$sdist" --out "$work/wheels" \
      >"$logs/wheel-$kind.log" 2>&1
    log "wheel $kind: built in $((SECONDS - t0)) s"
  done
}

do_root() {
  [[ -x "$rootfs/usr/bin/python3" ]] && { log "root: $rootfs exists, kept"; return 0; }
  # --foreign + the second stage inside: every maintainer script runs emulated, as on a Pi.
  debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3,python3-venv,libgomp1,ca-certificates,mosquitto,mosquitto-clients \
    bookworm "$rootfs" http://deb.debian.org/debian >"$logs/debootstrap.log" 2>&1
  mkdir -p "$rootfs/usr/libexec/qemu-binfmt"
  cp /usr/bin/qemu-aarch64-static "$rootfs/usr/bin/"
  ln -sf ../../bin/qemu-aarch64-static "$rootfs/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
  chroot "$rootfs" /debootstrap/debootstrap --second-stage >>"$logs/debootstrap.log" 2>&1
}

mounts() {
  local m
  for m in proc sys dev; do
    mountpoint -q "$rootfs/$m" || mount --bind "/$m" "$rootfs/$m"
  done
  # This machine's name server and CA bundle: pip reaches PyPI from inside as it does here.
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
}

unmounts() {
  local m
  for m in dev sys proc; do
    mountpoint -q "$rootfs/$m" && umount -l "$rootfs/$m"
  done
  return 0
}

# A clean environment inside the root, as a login would give.
root_env=(env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8
  PIP_DISABLE_PIP_VERSION_CHECK=1)
in_root() {
  chroot "$rootfs" "${root_env[@]}" "$@"
}

do_install() {
  mounts
  rm -rf "$rootfs/opt/src" && mkdir -p "$rootfs/opt/src" "$rootfs/opt/wheels" "$rootfs/opt/models"
  git -C "$repo" ls-files -z --cached --others --exclude-standard |
    tar -C "$repo" --null -T - -cf - | tar -C "$rootfs/opt/src" -xf -
  cp -r "$work/wheels/." "$rootfs/opt/wheels/"
  local gguf=${model:-$HOME/.local/share/edgellm/models/SmolLM2-135M-Instruct.Q4_1.gguf}
  cp -p "$gguf" "$rootfs/opt/models/"
  # Its verification record, if any, spares hashing it again under emulation.
  [[ -e "$gguf.verified.json" ]] && cp -p "$gguf.verified.json" "$rootfs/opt/models/"
  cat >"$rootfs/opt/check.yaml" <<YAML
node_id: armcheck
mqtt: {host: 127.0.0.1, port: $mqtt_port}
model: {name: smollm2-135m, dir: /opt/models, n_threads: 2, n_threads_batch: 2, n_ctx: 1024}
http: {enabled: true, bind: 127.0.0.1, port: $http_port}
wyoming: {enabled: false}
homeassistant: {discovery: false}
YAML
  local kind t0
  for kind in pi4 pi5; do
    [[ -x "$rootfs/opt/$kind/bin/edgellm" ]] && { log "install $kind: /opt/$kind exists, kept"; continue; }
    t0=$SECONDS
    in_root env EDGELLM_BOARD="$kind" EDGELLM_VENV="/opt/$kind" \
      bash /opt/src/deploy/bootstrap.sh --wheels "/opt/wheels/$kind" >"$logs/install-$kind.log" 2>&1 ||
      { tail -n 20 "$logs/install-$kind.log"; return 1; }
    log "install $kind: bootstrap.sh --wheels in $((SECONDS - t0)) s (emulated)"
  done
}

broker_pid=""
broker() {
  [[ -n "$broker_pid" ]] && return 0
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$mqtt_port" >"$work/mosquitto.conf"
  /usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$logs/mosquitto.log" 2>&1 &
  broker_pid=$!
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && return 0; sleep 0.1; done
  echo "arm-check.sh: the broker did not start" >&2
  return 1
}

# serve KIND CPU: the daemon from KIND's venv as CPU; times its start and first answers.
serve() {
  local kind=$1 cpu=$2 t0=$SECONDS pid out
  broker
  mounts
  if curl -fs "http://127.0.0.1:$http_port/api/version" >/dev/null; then
    log "$kind on $cpu: port $http_port is taken (an earlier daemon?)"
    return 1
  fi
  # exec: $! is then the daemon itself (chroot and env exec it), which the TERM below stops.
  (exec chroot "$rootfs" "${root_env[@]}" QEMU_CPU="$cpu" "/opt/$kind/bin/edgellm" serve \
    -c /opt/check.yaml) >"$logs/serve-$kind-$cpu.log" 2>&1 &
  pid=$!
  until curl -fs "http://127.0.0.1:$http_port/api/version" >/dev/null; do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; log "$kind on $cpu: died"; return 1; }
    ((SECONDS - t0 < 900)) || { log "$kind on $cpu: not up in 900 s"; kill "$pid"; return 1; }
    sleep 1
  done
  log "$kind wheel on $cpu: HTTP up after $((SECONDS - t0)) s (CPU probe, model load, emulated)"
  t0=$SECONDS
  out=$(in_root env QEMU_CPU="$cpu" "/opt/$kind/bin/edgellm" ask -c /opt/check.yaml --no-stream \
    --max-tokens 16 --timeout 600 "Name a colour.")
  [[ -n "$out" ]] || { log "$kind on $cpu: empty MQTT answer"; return 1; }
  log "$kind wheel on $cpu: MQTT answer in $((SECONDS - t0)) s: ${out:0:60}"
  t0=$SECONDS
  out=$(curl -fsS -m 600 "http://127.0.0.1:$http_port/api/generate" -d \
    '{"model":"smollm2-135m","prompt":"Name a colour.","stream":false,"options":{"num_predict":16}}')
  grep -q '"done": *true' <<<"$out" || { log "$kind on $cpu: bad HTTP answer $out"; return 1; }
  log "$kind wheel on $cpu: HTTP answer in $((SECONDS - t0)) s"
  kill -TERM "$pid"
  wait "$pid" || true
}

# The Pi 5 wheel on a Pi 4's CPU: the probe must stop it with exit 5 and the fitting build.
do_mismatch() {
  local t0=$SECONDS rc=0 out="$logs/serve-pi5-cortex-a72.log"
  broker
  mounts
  in_root env QEMU_CPU=cortex-a72 /opt/pi5/bin/edgellm serve -c /opt/check.yaml >"$out" 2>&1 ||
    rc=$?
  log "pi5 wheel on cortex-a72: exit $rc after $((SECONDS - t0)) s"
  if [[ $rc -ne 5 ]] || ! grep -q "The build that fits: pi4" "$out"; then
    log "pi5 wheel on cortex-a72: expected exit 5 naming the pi4 build; see $out"
    return 1
  fi
}

# The board and CPU unit tests, run by the emulated CPU (the probe's fake trees and the scripts).
do_tests() {
  mounts
  in_root /opt/pi4/bin/python -m pip install -q pytest pytest-timeout >"$logs/tests.log" 2>&1
  in_root env QEMU_CPU=cortex-a72 sh -c 'cd /opt/src && /opt/pi4/bin/python -m pytest -q \
    -p no:cacheprovider tests/test_cpufit.py tests/test_board_builds.py tests/test_wheels.py' \
    >>"$logs/tests.log" 2>&1 || { tail -n 30 "$logs/tests.log"; return 1; }
  log "tests inside: $(tail -n 1 "$logs/tests.log")"
}

trap 'unmounts; [[ -n "$broker_pid" ]] && kill "$broker_pid" 2>/dev/null; true' EXIT
log "run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores; steps: $steps"
step host-packages host_packages
for s in $steps; do
  case "$s" in
    wheels | root | install | mismatch | tests) step "$s" "do_$s" ;;
    a72) step a72 serve pi4 cortex-a72 ;;
    a76) step a76 serve pi5 cortex-a76 ;;
  esac
done
log "all steps passed"
