#!/usr/bin/env bash
# Installs the Debian packages the tests and `make run` use, only when they are missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v wrk >/dev/null || need+=(wrk)  # `make bench` load generator (REST)
command -v h2load >/dev/null || need+=(nghttp2-client)  # `make bench` load generator (gRPC)
command -v chromium >/dev/null || need+=(chromium)  # the web page's browser tests (Playwright)
# Debian's own python3.11 ships venv/ensurepip separately
python3.11 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3.11-venv)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# the Debian packages start their own daemons; maskfleet starts its own on free ports instead
for unit in redis-server prometheus; do
  $sudo service "$unit" stop >/dev/null 2>&1 || true
done
