#!/usr/bin/env bash
# System packages beside the Python stack: redis-server (the Redis user store's tests start a real
# server on loopback) and wrk (the service load test, benchmarks/serve_load.py). Debian's
# packages through apt-get; nothing is done when both are present.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -eq 0 ]; then echo "system packages: redis-server and wrk present"; exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "system packages: install ${need[*]} with your package manager (no apt-get here)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q "${need[@]}" || { $sudo apt-get update -q && $sudo apt-get install -y -q "${need[@]}"; }
echo "system packages: installed ${need[*]}"
