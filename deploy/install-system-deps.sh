#!/usr/bin/env bash
# Installs the Debian packages the alerting tests need: Prometheus (promtool) and Alertmanager (amtool).
# Idempotent: does nothing when promtool and amtool are already on PATH. Needs root (or passwordless
# apt via sudo is NOT attempted); when it cannot install, it says exactly what it skipped and exits 0
# so the tests that need the binaries skip with a clear reason instead of failing the build.
set -u

have() { command -v "$1" >/dev/null 2>&1; }

if have promtool && have amtool && have prometheus && have prometheus-alertmanager; then
    echo "system deps: prometheus and prometheus-alertmanager already installed (promtool, amtool found)"
    exit 0
fi

if [ "$(id -u)" != "0" ]; then
    echo "system deps: SKIPPED installing Debian packages prometheus and prometheus-alertmanager: not running as root."
    echo "system deps: the promtool/amtool checks and the end-to-end alerting test will be skipped."
    echo "system deps: install them with: sudo apt-get install prometheus prometheus-alertmanager"
    exit 0
fi

if ! have apt-get; then
    echo "system deps: SKIPPED installing prometheus and prometheus-alertmanager: apt-get not available on this system."
    echo "system deps: the promtool/amtool checks and the end-to-end alerting test will be skipped."
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "system deps: installing prometheus and prometheus-alertmanager with apt-get"
if ! apt-get update -qq >/dev/null; then
    echo "system deps: SKIPPED: apt-get update failed; alerting tests will be skipped."
    exit 0
fi
# --no-install-recommends keeps the node exporter and web assets out; policy-rc.d keeps the
# packages' services from being started on hosts where the package scripts would start them.
if ! apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; then
    echo "system deps: SKIPPED: apt-get install prometheus prometheus-alertmanager failed; alerting tests will be skipped."
    exit 0
fi
for tool in promtool amtool prometheus prometheus-alertmanager; do
    if have "$tool"; then
        echo "system deps: $tool -> $(command -v "$tool")"
    else
        echo "system deps: WARNING: $tool not found after install"
    fi
done
