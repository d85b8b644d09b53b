#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: the system packages tandem and
# its lab need, then .venv with tandem installed editable.  Re-running does
# only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iptables nftables iproute2 tcpdump procps
  libnetfilter-queue-dev libnfnetlink-dev build-essential
  python3-venv python3-dev
  keepalived
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # keepalived is only used as an interop peer in tests; never leave it running
  if command -v systemctl >/dev/null && systemctl is-active --quiet keepalived 2>/dev/null; then
    $SUDO systemctl disable --now keepalived >/dev/null 2>&1 || true
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.tandem-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing tandem (editable) and test dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
