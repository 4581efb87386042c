#!/usr/bin/env bash
# Caches the container runtime of the test bed's node (containerd, its runc v2 shim, ctr, runc)
# and builds the two OCI image archives its pods run, so no registry is ever needed.
#
# - containerd 1.6 and runc 1.1 are Debian bookworm's packages, fetched with `apt-get download`
#   and unpacked with `dpkg-deb -x`, NEVER installed: containerd's postinst may start a system
#   containerd, and nothing here may run on the host's own /run/containerd or /var/lib/containerd.
#   At run time they need only libc and libseccomp2, which apt itself depends on; the script
#   checks with ldd.
# - The images are made by hand from Debian's busybox-static (/bin/busybox, installed like
#   scripts/vm/build.sh does): a tar layer, config, manifest, index.json and oci-layout, with fixed
#   mtimes, owners and entry order, so the same busybox gives the same digests.
#     pause  (sandbox image): /bin/sh as PID 1 waits forever and exits 0 on SIGTERM or SIGINT
#     app    /bin with busybox links for sh dd sha256sum stat df blockdev cat ls sleep mkdir ...
#   Named through the index's io.containerd.image.name annotation, which
#   `ctr -n k8s.io images import` of containerd 1.6 stores verbatim (a bare
#   org.opencontainers.image.ref.name would be prefixed with "import-<date>").
#   CNI plugins are not fetched: the test bed's pods use hostNetwork only.
#
# Usage: e2e/scripts/build-node-runtime.sh [--force]
#
# Cache: ${TOPOLVM_RUNTIME_CACHE:-/var/cache/topolvm-rs/runtime}
#   bin/     containerd, containerd-shim-runc-v2, ctr, runc
#   images/  pause.oci.tar, app.oci.tar
#   stamp    package versions, image digests, sizes, sha256 of this script; when it matches,
#            the binaries are there and busybox-static is the same version, nothing is done
#            (well under a second)
#
# Output: log lines on stderr; on stdout only shell-evaluable KEY=value lines, the last one
# being TOPOLVM_RUNTIME_BIN=<dir>:
#   out=$(e2e/scripts/build-node-runtime.sh) && eval "$out"
#
# Needs root only when it must fetch or build (apt-get, the cache); a cold run takes a few
# seconds (28 MB of .debs).
set -euo pipefail

CACHE=${TOPOLVM_RUNTIME_CACHE:-/var/cache/topolvm-rs/runtime}
BIN=$CACHE/bin
IMAGES=$CACHE/images
STAMP=$CACHE/stamp
PAUSE_REF=localhost/topolvm-e2e/pause:1
APP_REF=localhost/topolvm-e2e/app:1
PAUSE_TAR=$IMAGES/pause.oci.tar
APP_TAR=$IMAGES/app.oci.tar
# package -> the version prefix the test bed is written for
declare -A WANT=([containerd]=1.6. [runc]=1.1.)
# What bin/ holds, and where each is in the packages.
declare -A FROM=([containerd]=usr/bin/containerd [containerd-shim-runc-v2]=usr/bin/containerd-shim-runc-v2
    [ctr]=usr/bin/ctr [runc]=usr/sbin/runc)
BINARIES=(containerd containerd-shim-runc-v2 ctr runc)
BUSYBOX=/bin/busybox
# The app image's commands: what the test bed's pods run against their volumes.
APP_APPLETS=(sh dd sha256sum stat df blockdev cat ls sleep mkdir touch id mount head tail wc echo
    test rm cp mv sync grep printf true false env)
# The pause image's PID 1: a trapped signal interrupts `wait`; PID 1 of a PID namespace
# ignores signals it has no handler for, so a bare `sleep` would never stop.
PAUSE_SCRIPT='trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
EPOCH=0 # mtime of every file in the images

SELF=$(readlink -f "${BASH_SOURCE[0]}")
SELF_SHA=$(sha256sum "$SELF")
SELF_SHA=${SELF_SHA%% *}

FORCE=0
for arg in "$@"; do
    case $arg in
        --force) FORCE=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "build-node-runtime: unknown argument: $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

log() { echo "build-node-runtime: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

declare -A STAMPV=()
load_stamp() {
    local line
    STAMPV=()
    [[ -r $STAMP ]] || return 1
    while IFS= read -r line; do
        if [[ $line == *=* ]]; then STAMPV[${line%%=*}]=${line#*=}; fi
    done <"$STAMP"
}

busybox_version() { dpkg-query -W -f='${Version}' busybox-static 2>/dev/null; }

# Cheap on purpose: stamp, sizes, one dpkg-query; no binary is started.
up_to_date() {
    local b size
    [[ $FORCE == 0 ]] || return 1
    load_stamp || return 1
    [[ ${STAMPV[script_sha256]:-} == "$SELF_SHA" ]] || return 1
    [[ ${STAMPV[busybox_version]:-} == "$(busybox_version)" ]] || return 1
    for b in "${BINARIES[@]}"; do
        size=$(stat -c %s "$BIN/$b" 2>/dev/null) || return 1
        [[ -x $BIN/$b && $size == "${STAMPV[size_$b]:-}" ]] || return 1
    done
    for b in "$PAUSE_TAR" "$APP_TAR"; do
        size=$(stat -c %s "$b" 2>/dev/null) || return 1
        [[ $size == "${STAMPV[size_${b##*/}]:-}" ]] || return 1
    done
}

report() {
    log "containerd ${STAMPV[containerd_version]}, runc ${STAMPV[runc_version]} in $BIN"
    log "images $PAUSE_REF (${STAMPV[pause_manifest]}), $APP_REF (${STAMPV[app_manifest]}) in $IMAGES"
    printf 'TOPOLVM_CONTAINERD_VERSION=%q\n' "${STAMPV[containerd_version]}"
    printf 'TOPOLVM_RUNC_VERSION=%q\n' "${STAMPV[runc_version]}"
    printf 'TOPOLVM_PAUSE_IMAGE=%q\n' "$PAUSE_REF"
    printf 'TOPOLVM_PAUSE_IMAGE_TAR=%q\n' "$PAUSE_TAR"
    printf 'TOPOLVM_APP_IMAGE=%q\n' "$APP_REF"
    printf 'TOPOLVM_APP_IMAGE_TAR=%q\n' "$APP_TAR"
    printf 'TOPOLVM_RUNTIME_BIN=%q\n' "$BIN"
}

if up_to_date; then
    report
    exit 0
fi

# --- slow path -----------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "needs root (apt-get, $CACHE); run it with sudo"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # another instance may be building: wait for it, then re-check
if up_to_date; then
    report
    exit 0
fi
log "fetching containerd and runc from Debian, building the pause and app images into $CACHE"
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update() {
    if [[ $APT_UPDATED == 0 ]]; then
        log "apt-get update"
        apt-get update -q >&2
        APT_UPDATED=1
    fi
}

if [[ -z $(busybox_version) || ! -x $BUSYBOX ]]; then
    apt_update
    log "apt-get install busybox-static"
    apt-get install -y -q --no-install-recommends busybox-static >&2
fi
LC_ALL=C ldd "$BUSYBOX" >/dev/null 2>&1 && die "$BUSYBOX is not static (busybox-static expected)"
BUSYBOX_V=$(busybox_version)

work=$(mktemp -d "$CACHE/work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. containerd and runc: download, check the versions, unpack.
declare -A VERSION=()
for pkg in "${!WANT[@]}"; do
    v=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2 }')
    if [[ -z $v || $v == "(none)" ]]; then
        apt_update
        v=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
    fi
    [[ $v == "${WANT[$pkg]}"* ]] || die "apt's candidate for $pkg is '$v', want ${WANT[$pkg]}x (Debian bookworm)"
    VERSION[$pkg]=$v
    log "apt-get download $pkg=$v"
    (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$v" >&2) ||
        die "cannot download $pkg=$v"
    dpkg-deb -x "$work/${pkg}_"*.deb "$work/root"
done
for b in "${BINARIES[@]}"; do
    f=$work/root/${FROM[$b]}
    [[ -x $f ]] || die "$b is not at /${FROM[$b]} in the packages"
    missing=$(LC_ALL=C ldd "$f" 2>&1 | awk '/not found/ { print $1 }')
    [[ -z $missing ]] || die "$b needs libraries this host lacks: $missing"
done
"$work/root/usr/bin/containerd" --version >&2
"$work/root/usr/sbin/runc" --version | head -n 1 >&2

# 2. The images. Every blob is written to $1/blobs/sha256/<digest>; blob FILE prints its digest.
blob() {
    local d
    d=$(sha256sum "$2")
    d=${d%% *}
    mkdir -p "$1/blobs/sha256"
    mv "$2" "$1/blobs/sha256/$d"
    echo "$d"
}
# A deterministic tar of directory $1's contents into $2 (entries sorted, owners 0, one mtime).
det_tar() {
    tar --create --file "$2" --directory "$1" --format=ustar --sort=name --numeric-owner \
        --owner=0 --group=0 --mtime="@$EPOCH" .
}
case $(dpkg --print-architecture) in
    amd64) ARCH=amd64 ;;
    arm64) ARCH=arm64 ;;
    *) die "no OCI architecture known for $(dpkg --print-architecture)" ;;
esac
# build_image NAME REF CONFIG_JSON_FRAGMENT APPLET...: the rootfs is busybox with the applets
# as symlinks in /bin, /etc/passwd and /etc/group with root and nobody, an empty /tmp.
declare -A MANIFEST=()
build_image() {
    local name=$1 ref=$2 process=$3
    shift 3
    local rootfs=$work/$name-rootfs layout=$work/$name-layout a layer layer_size config config_size
    local manifest manifest_size
    mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev} "$layout"
    install -m 0755 "$BUSYBOX" "$rootfs/bin/busybox"
    for a in "$@"; do ln -s busybox "$rootfs/bin/$a"; done
    printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
    chmod 1777 "$rootfs/tmp"
    chmod 0755 "$rootfs"/{bin,etc,proc,sys,dev} "$rootfs"
    det_tar "$rootfs" "$work/layer.tar"
    layer_size=$(stat -c %s "$work/layer.tar")
    layer=$(blob "$layout" "$work/layer.tar")
    printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$ARCH" "$process" "$layer" >"$work/config.json"
    config_size=$(stat -c %s "$work/config.json")
    config=$(blob "$layout" "$work/config.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
        "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
    manifest_size=$(stat -c %s "$work/manifest.json")
    manifest=$(blob "$layout" "$work/manifest.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "$manifest" "$manifest_size" "$ref" "${ref##*:}" >"$layout/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    chmod -R a+rX "$layout"
    det_tar "$layout" "$work/$name.oci.tar"
    MANIFEST[$name]=sha256:$manifest
}
build_image pause "$PAUSE_REF" \
    "$(printf '"Entrypoint":["/bin/sh","-c","%s"]' "${PAUSE_SCRIPT//\"/\\\"}")" sh sleep
build_image app "$APP_REF" '"Cmd":["/bin/sh"]' "${APP_APPLETS[@]}"

# 3. Install with one atomic rename per file (a test bed may be starting them right now).
mkdir -p "$BIN" "$IMAGES"
sizes=""
for b in "${BINARIES[@]}"; do
    install -m 0755 "$work/root/${FROM[$b]}" "$BIN/.$b.new"
    mv -f "$BIN/.$b.new" "$BIN/$b"
    sizes+="size_$b=$(stat -c %s "$BIN/$b")"$'\n'
done
for f in "$PAUSE_TAR" "$APP_TAR"; do
    install -m 0644 "$work/${f##*/}" "$f.new"
    mv -f "$f.new" "$f"
    sizes+="size_${f##*/}=$(stat -c %s "$f")"$'\n'
done
tmp_stamp=$(mktemp "$CACHE/stamp.XXXXXX")
cat >"$tmp_stamp" <<EOF
containerd_version=${VERSION[containerd]}
runc_version=${VERSION[runc]}
busybox_version=$BUSYBOX_V
pause_image=$PAUSE_REF
pause_manifest=${MANIFEST[pause]}
app_image=$APP_REF
app_manifest=${MANIFEST[app]}
script_sha256=$SELF_SHA
built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
${sizes%$'\n'}
EOF
chmod 0644 "$tmp_stamp"
mv "$tmp_stamp" "$STAMP"
load_stamp
report
