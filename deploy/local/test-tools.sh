#!/usr/bin/env bash
# The Debian packages the tests run for real: Prometheus (promtool, and the server for the
# end-to-end alerting test), Alertmanager (amtool, and the server) and docker-compose (to
# validate the Compose file). Installs what is
# missing with apt-get when it can (root, or sudo without a password); otherwise says how.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
{ command -v amtool >/dev/null 2>&1 \
  && { command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1; }; } \
  || need+=(prometheus-alertmanager)
# Validates the Compose file (`docker-compose config`); no Docker engine needed.
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
[[ ${#need[@]} -eq 0 ]] && exit 0
echo "installing for the deployment and alerting tests: ${need[*]}"
if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "cannot install ${need[*]}: run \`sudo apt-get install -y ${need[*]}\` and retry" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
# The packages' services are not wanted: the tests start their own on loopback ports.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
  trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
fi
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
