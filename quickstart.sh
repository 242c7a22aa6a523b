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
  # Installing openvswitch-switch would start the machine's own OVS service in the root
  # namespace; the lab runs its own daemons per host, so keep services from starting for
  # the duration of the install (the standard policy-rc.d mechanism).
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
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    exec .venv/bin/pytest -q
    ;;
  *)
    die "usage: $0 demo|test"
    ;;
esac
