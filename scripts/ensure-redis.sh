#!/usr/bin/env bash
# Makes sure redis-server and redis-benchmark are on PATH: the tests, `npm start` (the demo) and
# the benchmarks spawn their own redis-servers on free loopback ports. Installs Debian's packages
# when running as root; otherwise says what to run. A no-op when both are already there.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; then
  exit 0
fi

install_cmd="apt-get update && apt-get install -y redis-server redis-tools"

if [ "$(id -u)" -ne 0 ]; then
  echo "slotproxy needs redis-server and redis-benchmark (Redis 7) on PATH." >&2
  echo "On Debian/Ubuntu install them with:  sudo sh -c '$install_cmd'" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "slotproxy needs redis-server and redis-benchmark (Redis 7) on PATH, and there is no apt-get here:" >&2
  echo "install them with this system's package manager." >&2
  exit 1
fi

echo "ensure-redis: installing redis-server and redis-tools with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools

# The package may start a system Redis on 6379. Nothing here uses it (every test and the demo
# start their own servers), so stop it and keep it from starting at boot; without an init
# system these commands fail harmlessly.
service redis-server stop >/dev/null 2>&1 || true
systemctl disable redis-server >/dev/null 2>&1 || true
update-rc.d redis-server disable >/dev/null 2>&1 || true

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
  echo "ensure-redis: installed, but redis-server or redis-benchmark is still not on PATH" >&2
  exit 1
fi
