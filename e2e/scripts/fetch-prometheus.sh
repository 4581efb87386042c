#!/usr/bin/env bash
# Caches Debian's Prometheus server and promtool for the monitoring e2e test
# (e2e/tests/monitoring.rs), taken from the `prometheus` .deb and NOT installed
# (installing would start a daemon and add a system user): `apt-get download` + `dpkg-deb -x`,
# as build-control-plane.sh does for kubectl.
#
# Cache: ${TOPOLVM_PROMETHEUS_CACHE:-/var/cache/topolvm-rs/prometheus}
#   bin/   prometheus, promtool
#   stamp  the package version; when it matches and the binaries run, nothing is done
#
# Output: the last line on stdout is TOPOLVM_PROMETHEUS_BIN=<dir>.
set -euo pipefail

cache=${TOPOLVM_PROMETHEUS_CACHE:-/var/cache/topolvm-rs/prometheus}
bin=$cache/bin
version=$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}')
if [[ -z $version || $version == "(none)" ]]; then
    apt-get update -qq
    version=$(apt-cache policy prometheus | awk '/Candidate:/ {print $2}')
fi
if [[ -f $cache/stamp && $(cat "$cache/stamp") == "$version" ]] &&
    "$bin/prometheus" --version >/dev/null 2>&1 && "$bin/promtool" --version >/dev/null 2>&1; then
    echo "TOPOLVM_PROMETHEUS_BIN=$bin"
    exit 0
fi
echo "fetch-prometheus: prometheus $version into $cache" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "prometheus=$version" >/dev/null 2>&1)
dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
mkdir -p "$bin"
install -m 0755 "$work/x/usr/bin/prometheus" "$work/x/usr/bin/promtool" "$bin/"
echo "$version" >"$cache/stamp"
"$bin/prometheus" --version >&2
echo "TOPOLVM_PROMETHEUS_BIN=$bin"
