#!/usr/bin/env bash
# Installs the tools `make test` needs beyond cargo when they are absent: promtool (Debian's
# prometheus package) checks deploy/prometheus/alerts.yml. Needs root (or sudo) for apt-get;
# otherwise it says what to install.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "tools: promtool not found and not root: apt-get install prometheus" >&2
    exit 1
  fi
fi
echo "tools: installing promtool (Debian package prometheus)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null
