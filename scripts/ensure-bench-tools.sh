#!/usr/bin/env bash
# Makes sure the tools `npm run bench` drives are installed: redis-server, redis-benchmark
# (Debian package redis-tools) and nutcracker (Twemproxy). As root and with apt-get, installs the
# missing packages and stops any service their install started (the bench starts its own servers on
# free loopback ports and never uses the packaged ones). Otherwise explains what to install.
set -euo pipefail

# nutcracker lives in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || packages+=(redis-tools)
command -v nutcracker >/dev/null 2>&1 || packages+=(nutcracker)

if [ "${#packages[@]}" -eq 0 ]; then
  version="$(redis-benchmark --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -n 1 || true)"
  if [ -n "$version" ] && [ "${version%%.*}" -lt 7 ]; then
    echo "ensure-bench-tools: warning: redis-benchmark $version; the bench parses the CSV of redis-benchmark 7 (p50/p95/p99 columns)" >&2
  fi
  exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<MSG
ensure-bench-tools: missing: ${packages[*]}
The bench needs redis-server and redis-benchmark (Redis 7) and nutcracker (Twemproxy) on PATH.
Install them as root, e.g. on Debian/Ubuntu:
    sudo apt-get install -y redis-server redis-tools nutcracker
then stop the services the packages start (the bench runs its own servers on free loopback ports):
    sudo service nutcracker stop; sudo service redis-server stop
and run 'npm run bench' again.
MSG
  exit 1
fi

echo "ensure-bench-tools: installing ${packages[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive

# Keep the packages' init scripts from starting services during the install (Debian's
# policy-rc.d convention); remove the guard afterwards only if we created it.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# slotproxy ensure-bench-tools: no service starts during this install\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
remove_policy() {
  if [ "$created_policy" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap remove_policy EXIT

if ! apt-get install -y --no-install-recommends "${packages[@]}"; then
  apt-get update
  apt-get install -y --no-install-recommends "${packages[@]}"
fi

# Stop whatever the install started anyway (systemd ignores policy-rc.d), by service, then by the
# pid file the package writes (only that pid, and only if it is the packaged daemon).
stop_service() {
  local service="$1" binary="$2" pidfile="$3"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" || true
  elif command -v service >/dev/null 2>&1; then
    service "$service" stop >/dev/null 2>&1 || true
  fi
  if [ -f "$pidfile" ]; then
    local pid
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$binary" ]; then
      echo "ensure-bench-tools: stopping $binary (pid $pid) started by the package install"
      kill "$pid" 2>/dev/null || true
    fi
  fi
}
for package in "${packages[@]}"; do
  case "$package" in
    nutcracker) stop_service nutcracker nutcracker /run/nutcracker/nutcracker.pid ;;
    redis-server) stop_service redis-server redis-server /run/redis/redis-server.pid ;;
  esac
done

for tool in redis-server redis-benchmark nutcracker; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "ensure-bench-tools: $tool still missing after the install" >&2
    exit 1
  fi
done
echo "ensure-bench-tools: ready"
