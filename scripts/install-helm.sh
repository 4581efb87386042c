#!/usr/bin/env bash
# Installs Helm's chart engine for rendering deploy/charts/topolvm-rs: the PyPI package
# helm-python-sdk, which ships Helm's own Go SDK (v4) built as a shared library (libhelm_c.so)
# with a ctypes binding. No helm CLI binary can be had from the registries this project reaches;
# this is the same template engine and sprig functions the CLI uses. Installed once into
# /var/cache/topolvm-rs/helm (TOPOLVM_HELM_DIR overrides); a second run does nothing.
set -euo pipefail

version=0.2.2
dir=${TOPOLVM_HELM_DIR:-/var/cache/topolvm-rs/helm}
marker="$dir/helm-python-sdk-$version"

if [[ -e $marker ]]; then
    exit 0
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "install-helm: python3 has no pip (apt-get install python3-pip)" >&2
    exit 1
fi
echo "install-helm: installing helm-python-sdk $version into $dir"
rm -rf "$dir/lib.new"
mkdir -p "$dir"
extra=()
# Debian's own python refuses to install outside its packages unless told; --target keeps
# this install apart from the system's site-packages.
if python3 -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
    extra+=(--break-system-packages)
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps "${extra[@]}" \
    --target "$dir/lib.new" "helm-python-sdk==$version"
rm -rf "$dir/lib"
mv "$dir/lib.new" "$dir/lib"
touch "$marker"
