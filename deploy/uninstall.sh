#!/usr/bin/env bash
# Remove what deploy/install.sh installed. Config, models and the broker password stay unless
# --purge says otherwise.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: deploy/uninstall.sh [options]    (as root, or with sudo)

Stops and disables edgellm, removes the unit (and its Jetson drop-in) and /opt/edgellm.
Keeps /etc/edgellm (config), /var/lib/edgellm (models) and the broker files unless --purge.

Options:
  --purge            also remove config, models, cache, the daemon's broker password, the
                     mosquitto drop-in/ACL/password file installed by --with-broker, and the
                     system user "edgellm"
  --dry-run          print every action, change nothing
  --prefix DIR       uninstall from DIR instead of / (no systemctl, no user removal)
  -h, --help         this text
USAGE
}

dry_run=0
prefix=""
purge=0
while (($#)); do
  case "$1" in
    --purge) purge=1 ;;
    --dry-run) dry_run=1 ;;
    --prefix)
      [[ $# -ge 2 ]] || { echo "uninstall.sh: --prefix needs a directory" >&2; exit 2; }
      prefix=$2
      shift
      ;;
    --prefix=*) prefix=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *) echo "uninstall.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"
resolve_root uninstall.sh "$prefix"

# Remove a path if it is there (and say so); nothing to do is not an error.
remove() {
  local path
  for path in "$@"; do
    if [[ -e "$path" || -L "$path" ]]; then
      say "removing $path"
      run rm -rf -- "$path"
    fi
  done
}


unit_dir="$root/etc/systemd/system"
systemd_up=0
[[ $real_install -eq 1 && -d /run/systemd/system ]] && systemd_up=1

if [[ $systemd_up -eq 1 ]] && systemctl list-unit-files edgellm.service >/dev/null 2>&1; then
  run systemctl disable --now edgellm.service || true
fi
remove "$unit_dir/edgellm.service" "$unit_dir/edgellm.service.d"
[[ $systemd_up -eq 1 ]] && run systemctl daemon-reload
remove "$root/opt/edgellm"

if [[ $purge -eq 1 ]]; then
  remove "$root/etc/edgellm" "$root/var/lib/edgellm" "$root/var/lib/private/edgellm" \
    "$root/var/cache/edgellm" "$root/etc/credstore/edgellm.mqtt_password"
  mosq="$root/etc/mosquitto"
  if [[ -e "$mosq/conf.d/edgellm.conf" ]]; then
    remove "$mosq/conf.d/edgellm.conf" "$mosq/edgellm.acl" "$mosq/edgellm.passwd"
    if [[ $systemd_up -eq 1 ]] && systemctl is-active --quiet mosquitto; then
      run systemctl restart mosquitto
    fi
  fi
  if [[ $real_install -eq 1 ]] && getent passwd edgellm >/dev/null; then
    say "removing the system user edgellm"
    run userdel edgellm
  fi
else
  for kept in "$root/etc/edgellm" "$root/var/lib/edgellm"; do
    [[ -e "$kept" ]] && say "keeping $kept (--purge removes it)"
  done
fi
say "done"
