#!/usr/bin/env bash
# Command one: install what is missing, fetch the default model, make sure a local broker
# listens, and run the daemon in the foreground on its embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/bootstrap.sh
venv="${EDGELLM_VENV:-.venv}"
"$venv/bin/edgellm" model fetch

broker_pid=""
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  echo "edgellm: no broker on 127.0.0.1:1883; starting mosquitto with deploy/mosquitto/local.conf"
  mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  # local.conf's persistence_location, relative to this directory; mosquitto does not create it,
  # and started as root it writes as its own user.
  mkdir -p .mosquitto
  if [[ $EUID -eq 0 ]] && id mosquitto >/dev/null 2>&1; then chown mosquitto: .mosquitto; fi
  "$mosq" -c deploy/mosquitto/local.conf &
  broker_pid=$!
  trap '[[ -n "$broker_pid" ]] && kill "$broker_pid" 2>/dev/null' EXIT
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
fi

node=$("$venv/bin/python" -c 'from daemon.config import load; print(load().node_id)')
cat <<MSG

edgellm: starting. Ask it from another terminal:
  $venv/bin/edgellm ask "Why is the sky blue?"
  mosquitto_rr -V 5 -t edgellm/$node/request -e edgellm/$node/response/cli -m "Hello"
  mosquitto_sub -t 'edgellm/$node/response/#' -v &  mosquitto_pub -t edgellm/$node/request -m "Hello"
Stop with Ctrl-C.

MSG
"$venv/bin/edgellm" serve
