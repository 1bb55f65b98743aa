#!/usr/bin/env bash
# Makes sure a `prometheus` binary is on PATH: test/observability starts its own Prometheus on a
# free loopback port, scraping a proxy, to check the Grafana dashboard's queries. Installs
# Debian's package when running as root; otherwise says what to run. A no-op when it is there.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi

install_cmd="apt-get update && apt-get install -y --no-install-recommends prometheus"

if [ "$(id -u)" -ne 0 ]; then
  echo "slotproxy's observability tests need a prometheus binary on PATH (they skip without it)." >&2
  echo "On Debian/Ubuntu install it with:  sudo sh -c '$install_cmd'" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "slotproxy's observability tests need a prometheus binary on PATH, and there is no apt-get here:" >&2
  echo "install it with this system's package manager (the tests skip without it)." >&2
  exit 0
fi

echo "ensure-prometheus: installing prometheus with apt-get" >&2
apt-get update -qq
# --no-install-recommends: the package recommends node-exporter and friends, which we do not need.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus

# The package starts a system Prometheus on :9090 where an init system runs. The tests start
# their own on a free port with their own storage, so stop it and keep it from starting at
# boot; without an init system these commands fail harmlessly.
service prometheus stop >/dev/null 2>&1 || true
systemctl disable prometheus >/dev/null 2>&1 || true
update-rc.d prometheus disable >/dev/null 2>&1 || true

if ! command -v prometheus >/dev/null 2>&1; then
  echo "ensure-prometheus: installed, but prometheus is still not on PATH" >&2
  exit 1
fi
