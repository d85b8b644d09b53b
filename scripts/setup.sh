#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: the system packages tandem and
# its lab need, then .venv with tandem installed editable, then what the
# Ansible deployment and its lab test need (ansible-core, ansible-lint,
# openssh-server, a wheelhouse of tandem's dependencies).  Re-running does
# only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iptables nftables iproute2 tcpdump procps
  libnetfilter-queue-dev libnfnetlink-dev build-essential
  python3-venv python3-dev
  keepalived
  # conntrack-tools: `conntrack -L` reads the kernel table next to proto/ctnetlink (lab test)
  conntrack
  # the Ansible lab test (tests/lab/test_ansible.py): an sshd per director
  # namespace, and python3-apt for ansible.builtin.apt on the targets
  openssh-server python3-apt
  # the cluster lab (lab/bgp.py): BIRD 2 announces VIPs from each director namespace
  # to an ECMP router namespace; only the lab's own bird processes ever run
  bird2
  # real servers that read PROXY headers (tests/lab/test_proxy_servers.py): nginx's
  # `listen ... proxy_protocol` and HAProxy's `accept-proxy`, run only by the lab in the
  # real servers' namespaces, never as system services
  nginx haproxy
  # make bench: iperf3 measures throughput through each forwarding path side by side, and
  # conntrackd (FTFW) with keepalived and nftables is the standard toolchain pair drilled
  # beside tandem; both run only in the lab's namespaces, never as system services
  iperf3 conntrackd
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # openssh-server is only wanted for the lab test's own sshd processes: keep
  # the package's maintainer scripts from starting a system sshd (policy-rc.d
  # exit 101 = "action forbidden", honoured by invoke-rc.d and deb-systemd-invoke)
  policy_made=""
  if [[ " ${missing[*]} " == *" openssh-server "* || " ${missing[*]} " == *" bird2 "* \
        || " ${missing[*]} " == *" nginx "* || " ${missing[*]} " == *" haproxy "* \
        || " ${missing[*]} " == *" conntrackd "* || " ${missing[*]} " == *" iperf3 "* ]] \
     && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    policy_made=1
  fi
  rc=0
  $SUDO apt-get update -qq || rc=$?
  if [ "$rc" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  fi
  [ -z "$policy_made" ] || $SUDO rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || exit "$rc"
  if [[ " ${missing[*]} " == *" openssh-server "* ]] && command -v systemctl >/dev/null \
     && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
  # keepalived is only used as an interop peer in tests, bird only by the lab's
  # namespaces; never leave the system services running
  for unit in keepalived bird nginx haproxy conntrackd iperf3; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
      $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
  done
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

# Ansible (the two-node deployment in ansible/): ansible-core 2.19 is the newest
# line that runs on Python 3.11; it and ansible-lint install into .venv without
# changing any package already there.
stamp=.venv/.tandem-ansible-installed
if [ ! -f "$stamp" ] || [ ! -x .venv/bin/ansible-playbook ] || [ ! -x .venv/bin/ansible-lint ]; then
  echo "setup: installing ansible-core 2.19 and ansible-lint into .venv"
  .venv/bin/pip install -q 'ansible-core>=2.19,<2.20' 'ansible-lint>=25'
  touch "$stamp"
fi

# Wheels of tandem's dependencies (and its build backend), so the playbook can
# install tandem on hosts that reach no package index (the lab's namespaces).
wheelhouse=.venv/share/tandem/wheelhouse
if [ ! -f "$wheelhouse/.complete" ] || [ pyproject.toml -nt "$wheelhouse/.complete" ]; then
  echo "setup: building the wheelhouse $wheelhouse"
  ansible/wheelhouse.sh "$wheelhouse" .venv/bin/python
fi
