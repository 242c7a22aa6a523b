#!/usr/bin/env bash
# ovs-overlay quickstart, for a fresh Debian 12 machine, as root.
#
#   ./quickstart.sh demo   set everything up, then run the 3-host lab demo
#   ./quickstart.sh test   set everything up, then run lint and the whole test suite
#
# "Set everything up" is idempotent and quick when nothing changed: Debian packages
# (only the missing ones) and a virtualenv at .venv/ with ovs-overlay installed
# editable, rebuilt when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

APT_PACKAGES=(
  openvswitch-switch   # ovsdb-server, ovs-vswitchd, ovs-vsctl/ofctl/appctl (lab and tests)
  iproute2             # ip netns (observing the lab)
  ethtool              # checking offloads in tests
  iputils-ping         # reachability checks
  iperf3               # TCP through the lab
  containernetworking-plugins  # reference CNI plugins (host-local IPAM) for the CNI tests
  podman runc          # a real runtime driving the plugin (tests/lab/test_runtime.py)
  containerd           # its CRI plugin drives the plugin (lab containerd, tests/lab/test_containerd.py)
  docker.io            # dockerd 20.10 per lab host (lab docker, tests/lab/test_docker.py); by
                       # path (/usr/sbin/dockerd, /usr/bin/docker), in the lab's namespaces only
  busybox-static       # the root of those tests' containers and of the lab's Docker image
  nftables             # that test reads the root namespace's ruleset (nft list ruleset)
  libpcap0.8           # scapy sends and sniffs through libpcap (the lab's forged-packet tests)
  etcd-server etcd-client  # the distributed cluster state: real etcd in tests and the lab
  python3-venv         # the virtualenv
  python3-dev gcc      # building wheels that have no binary for this Python
)

die() { echo "quickstart: $*" >&2; exit 1; }

setup_apt() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "quickstart: installing Debian packages: ${missing[*]}"
  # Installing openvswitch-switch (or docker.io, etcd-server) would start the machine's
  # own service in the root namespace (docker.io's: docker0 and iptables rules); the lab
  # runs its own daemons per host, so keep services from starting for the duration of the
  # install (the standard policy-rc.d mechanism).
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
  fi
  local rc=0
  { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  } || rc=$?
  if [ $made_policy -eq 1 ]; then rm -f "$policy"; fi
  [ $rc -eq 0 ] || die "apt-get failed (exit $rc) installing: ${missing[*]}"
  # policy-rc.d only holds services back during the install: docker.io leaves its
  # service and socket enabled, so the next boot (or a docker CLI touching
  # /run/docker.sock) would start the machine's own dockerd, with docker0 and iptables
  # rules in the root namespace.  The lab runs dockerd per host; the machine's stays off.
  if [[ " ${missing[*]} " == *" docker.io "* ]] && command -v systemctl >/dev/null; then
    systemctl disable docker.service docker.socket >/dev/null 2>&1 ||
      echo "quickstart: could not disable docker.service/docker.socket; disable them by hand" >&2
  fi
}

setup_venv() {
  local stamp=.venv/.installed
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "quickstart: building .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[dev]'; } \
      > .venv/install.log 2>&1; then
    tail -20 .venv/install.log >&2
    die "pip could not install ovs-overlay into .venv (full log: .venv/install.log)"
  fi
  echo "$want" > "$stamp"
}

# Ryu 4.34 (2020), for the test that runs the agent's app under ryu-manager: its own venv,
# because Ryu pins old tools.  Its setup.py needs setuptools' removed easy_install API,
# hence setuptools<66 and no build isolation.  The app itself comes from the repo
# (PYTHONPATH), with the libraries it needs.
RYU_REQS=("ryu==4.34" "pyroute2>=0.9.7,<0.10" "ovsdbapp>=3.0,<4" "prometheus-client>=0.20,<1")

setup_ryu_venv() {
  local stamp=.venv-ryu/.installed want="${RYU_REQS[*]}"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "quickstart: building .venv-ryu"
  [ -x .venv-ryu/bin/python ] || python3 -m venv .venv-ryu
  if ! { .venv-ryu/bin/pip install -q "setuptools<66" wheel &&
         .venv-ryu/bin/pip install -q --no-build-isolation "${RYU_REQS[@]}"; } \
      > .venv-ryu/install.log 2>&1; then
    tail -20 .venv-ryu/install.log >&2
    die "pip could not install Ryu into .venv-ryu (full log: .venv-ryu/install.log)"
  fi
  echo "$want" > "$stamp"
}

setup() {
  [ "$(id -u)" -eq 0 ] || die "run as root: the lab creates network namespaces and OVS daemons"
  setup_apt
  setup_venv
}

case "${1:-}" in
  demo)
    setup
    exec .venv/bin/ovs-overlayctl lab demo --hosts 3
    ;;
  test)
    setup
    setup_ryu_venv
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    exec .venv/bin/pytest -q
    ;;
  *)
    die "usage: $0 demo|test"
    ;;
esac
