#!/usr/bin/env bash
# What the test suite needs beyond the Python packages (`make test` runs this first).
# Idempotent: each tool is installed only when missing. On a machine where a tool truly
# cannot be had (no root, no registry), the tests that need it skip and say why.
set -uo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

APT_UPDATED=0
apt_install() {
  # apt_install PACKAGE...: Debian packages, as root, `apt-get update` once per run.
  if ! have apt-get || [ "$(id -u)" != 0 ]; then
    echo "install-deps: cannot install $* (need root and apt-get); tests needing it will skip"
    return 0
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
    || echo "install-deps: apt-get install $* failed; tests needing it will skip"
}

# Sections below are added by the features that need them (one block per tool).
