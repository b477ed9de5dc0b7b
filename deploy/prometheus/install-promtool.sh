#!/usr/bin/env bash
# Installs promtool (Debian package `prometheus`) if missing: tests/test_deploy_monitoring.py
# runs it. A policy-rc.d denying service starts keeps the postinst from starting a Prometheus
# server; any server the install started anyway is stopped.
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (apt package prometheus)" >&2
  before=" $( (pgrep -x prometheus || true) | tr '\n' ' ') "
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
  fi
  install_promtool() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus </dev/null
  }
  # apt-get update only without a candidate, or when the install fails on stale lists.
  if apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: (none)' \
      || [ -z "$(apt-cache policy prometheus 2>/dev/null)" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q || true
  fi
  status=0
  install_promtool || { DEBIAN_FRONTEND=noninteractive apt-get update -q && install_promtool; } \
    || status=$?
  if [ -n "$policy" ]; then rm -f "$policy"; fi
  for pid in $(pgrep -x prometheus || true); do
    case "$before" in *" $pid "*) ;; *) kill "$pid" 2>/dev/null || true ;; esac
  done
  [ "$status" -eq 0 ] || { echo "apt-get install prometheus failed" >&2; exit 1; }
fi
command -v promtool >/dev/null || { echo "promtool is not installed" >&2; exit 1; }
