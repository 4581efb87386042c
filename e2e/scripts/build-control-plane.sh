#!/usr/bin/env bash
# Build and cache a Kubernetes 1.20 control plane (kube-apiserver, kube-scheduler,
# kube-controller-manager) and kubelet from Debian's `kubernetes` source package,
# for the end-to-end test bed (kubelet runs only inside the VM tier's guest: on a
# host it rewrites host-wide sysctls). etcd is Debian's etcd-server (3.4, /usr/bin/etcd);
# kubectl 1.20 is taken from Debian's kubernetes-client .deb of the same source
# version and put next to the other binaries, NOT installed: /usr/bin/kubectl
# may belong to another package (e.g. Google's `kubectl`, a much newer version).
# Two vendored libraries are changed before the build because Debian's Go (1.19)
# is newer than the Go 1.15 that 1.20 was released with: reflect2 (crash) and
# kube-openapi (empty strings taken for null); e2e/README.md says why.
#
# Usage: e2e/scripts/build-control-plane.sh [--keep-source] [--force]
#
#   --keep-source  keep the source tree and Go build cache after a build
#   --force        rebuild even when the cache is up to date
#
# Cache: ${TOPOLVM_K8S_CACHE:-/var/cache/topolvm-rs/k8s}
#   bin/    kube-apiserver, kube-scheduler, kube-controller-manager, kubelet, kubectl
#   stamp   source package version + sha256 of this script; when it matches
#           and the binaries run, the script does nothing (well under 1 s)
#   work/   apt-get source + build tree (deleted after a successful build)
#
# The source version is apt's candidate for `kubernetes` at build time; set
# TOPOLVM_K8S_SRC_VERSION to pin one (a stamp with another version is stale).
#
# Output: log lines on stderr; on stdout only shell-evaluable KEY=value lines,
# the last one being TOPOLVM_K8S_BIN=<dir>:
#   eval "$(e2e/scripts/build-control-plane.sh)"
#
# Needs root for apt-get (only when something must be installed or fetched).
# The first build takes 6-9 min on 2 cores (more when the machine is busy) and
# ~1.4 GB RSS; it needs no network apart from apt.
set -euo pipefail

CACHE=${TOPOLVM_K8S_CACHE:-/var/cache/topolvm-rs/k8s}
BIN=$CACHE/bin
STAMP=$CACHE/stamp
WORK=$CACHE/work
COMPONENTS=(kube-apiserver kube-scheduler kube-controller-manager kubelet)
SRC_PKG=kubernetes
SRC_PIN=${TOPOLVM_K8S_SRC_VERSION:-}
CLIENT_PKG=kubernetes-client # binary package of $SRC_PKG holding kubectl
# rsync, jq: Kubernetes' hack/ scripts; dpkg-dev, patch, xz-utils: apt-get source.
# golang-github-modern-go-reflect2-dev: see the vendor fix before the build.
PACKAGES=(etcd-server golang-go rsync jq openssl dpkg-dev make patch xz-utils golang-github-modern-go-reflect2-dev)
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
SRC_LIST=/etc/apt/sources.list.d/topolvm-rs-src.sources
ETCD=/usr/bin/etcd
KUBECTL=$BIN/kubectl

SELF=$(readlink -f "${BASH_SOURCE[0]}")
SELF_SHA=$(sha256sum "$SELF")
SELF_SHA=${SELF_SHA%% *}

KEEP_SOURCE=0
FORCE=0
for arg in "$@"; do
  case $arg in
    --keep-source) KEEP_SOURCE=1 ;;
    --force) FORCE=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "build-control-plane: unknown argument: $arg (see --help)" >&2
      exit 2
      ;;
  esac
done

log() { echo "build-control-plane: $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

declare -A STAMPV=() # the stamp's KEY=value lines
load_stamp() {
  local line
  STAMPV=()
  [[ -r $STAMP ]] || return 1
  while IFS= read -r line; do
    if [[ $line == *=* ]]; then STAMPV[${line%%=*}]=${line#*=}; fi
  done <"$STAMP"
}

# Prints "v1.20.x" when $1 is a Kubernetes 1.20 binary that runs, else fails.
k8s_binary_version() {
  local out
  [[ -x $1 ]] || return 1
  out=$("$1" --version 2>/dev/null) || return 1
  [[ $out =~ ^Kubernetes\ (v1\.20\.[0-9]+)$ ]] || return 1
  echo "${BASH_REMATCH[1]}"
}

kubectl_version() { # prints "v1.20.x" when $1 is a kubectl 1.20 that runs
  local out
  [[ -x $1 ]] || return 1
  out=$("$1" version --client --short 2>/dev/null) || return 1
  [[ $out =~ ^Client\ Version:\ (v1\.20\.[0-9]+)$ ]] || return 1
  echo "${BASH_REMATCH[1]}"
}

# Cheap on purpose (the no-op run must stay well under a second): the stamp
# matches, every binary has the size recorded in the stamp, and kube-apiserver
# and kubectl run and report v1.20.x.
K8S_V=""
KUBECTL_V=""
up_to_date() {
  local c size
  [[ $FORCE == 0 && -x $ETCD ]] || return 1
  load_stamp || return 1
  [[ ${STAMPV[script_sha256]:-} == "$SELF_SHA" ]] || return 1
  [[ -z $SRC_PIN || ${STAMPV[source_version]:-} == "$SRC_PIN" ]] || return 1
  for c in "${COMPONENTS[@]}" kubectl; do
    size=$(stat -c %s "$BIN/$c" 2>/dev/null) || return 1
    [[ -x $BIN/$c && $size == "${STAMPV[size_$c]:-}" ]] || return 1
  done
  K8S_V=$(k8s_binary_version "$BIN/kube-apiserver") || return 1
  KUBECTL_V=$(kubectl_version "$KUBECTL") || return 1
}

# Checks etcd and kubectl, then prints the KEY=value lines (stdout).
report() {
  local etcd_v kubectl_v=$KUBECTL_V k8s_v=$K8S_V
  [[ -x $ETCD ]] || die "$ETCD missing (package etcd-server)"
  etcd_v=$("$ETCD" --version | awk '/^etcd Version:/ { print $3 }')
  [[ $etcd_v == 3.4.* ]] || die "$ETCD is version '$etcd_v', want 3.4.x"
  log "kube-apiserver/kube-scheduler/kube-controller-manager/kubelet $k8s_v in $BIN (Debian source $SRC_PKG ${STAMPV[source_version]:-?})"
  log "etcd $etcd_v ($ETCD), kubectl $kubectl_v ($KUBECTL)"
  printf 'TOPOLVM_K8S_VERSION=%q\n' "$k8s_v"
  printf 'TOPOLVM_ETCD=%q\n' "$ETCD"
  printf 'TOPOLVM_ETCD_VERSION=%q\n' "$etcd_v"
  printf 'TOPOLVM_KUBECTL=%q\n' "$KUBECTL"
  printf 'TOPOLVM_KUBECTL_VERSION=%q\n' "$kubectl_v"
  printf 'TOPOLVM_K8S_BIN=%q\n' "$BIN"
}

# --- fast path: nothing to do ------------------------------------------------
if up_to_date; then
  report
  exit 0
fi

# --- slow path -----------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "needs root (apt-get, $CACHE); run it with sudo"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # another instance may be building: wait for it, then re-check
if up_to_date; then
  report
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update() {
  if [[ $APT_UPDATED == 0 ]]; then
    log "apt-get update"
    apt-get update -q >&2
    APT_UPDATED=1
  fi
}

ensure_packages() {
  local p missing=()
  for p in "${PACKAGES[@]}"; do
    if [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) != ii* ]]; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]})); then
    apt_update
    log "apt-get install ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
}

# shellcheck disable=SC1091
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ -n $CODENAME ]] || die "no VERSION_CODENAME in /etc/os-release"

# Is there an enabled deb-src entry for $CODENAME (one-line or deb822 style)?
have_deb_src() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    grep -Eq "^[[:space:]]*deb-src[[:space:]].*[[:space:]]${CODENAME}([[:space:]]|$)" "$f" && return 0
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    awk -v cn="$CODENAME" '
      BEGIN { RS = ""; FS = "\n"; found = 0 }
      {
        types = ""; suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^[Tt]ypes:/) { types = " " substr($i, 7) " " }
          if ($i ~ /^[Ss]uites:/) { suites = " " substr($i, 8) " " }
          if ($i ~ /^[Ee]nabled:/) { enabled = substr($i, 9) }
        }
        gsub(/[ \t]+/, " ", types); gsub(/[ \t]+/, " ", suites); gsub(/[ \t]/, "", enabled)
        if (types ~ / deb-src / && suites ~ (" " cn " ") && enabled != "no") found = 1
      }
      END { exit !found }' "$f" && return 0
  done
  return 1
}

# Writes $SRC_LIST: a deb-src twin of the existing deb entry for $CODENAME.
add_deb_src() {
  local f stanza=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    stanza=$(awk -v cn="$CODENAME" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; suites = ""; uris = ""; comps = ""; signed = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^[Tt]ypes:/) { types = " " substr($i, 7) " " }
          if ($i ~ /^[Ss]uites:/) { suites = substr($i, 8) }
          if ($i ~ /^URIs:/) { uris = substr($i, 6) }
          if ($i ~ /^[Cc]omponents:/) { comps = substr($i, 12) }
          if ($i ~ /^[Ss]igned-[Bb]y:/) { signed = substr($i, 11) }
        }
        gsub(/[ \t]+/, " ", types)
        if (types ~ / deb / && (" " suites " ") ~ ("[ \t]" cn "[ \t]") && uris != "") {
          print "Types: deb-src"
          print "URIs:" uris
          print "Suites:" suites
          print "Components:" comps
          if (signed != "") print "Signed-By:" signed
          exit
        }
      }' "$f")
    [[ -n $stanza ]] && break
  done
  if [[ -z $stanza ]]; then # one-line style: deb [opts] URI SUITE COMPONENTS...
    stanza=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk -v cn="$CODENAME" '
        $1 == "deb" {
          i = 2
          if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
          if ($(i + 1) != cn) next
          comps = ""
          for (j = i + 2; j <= NF; j++) comps = comps " " $j
          print "Types: deb-src"; print "URIs: " $i; print "Suites: " cn; print "Components:" comps
          exit
        }')
  fi
  [[ -n $stanza ]] || die "no 'deb' entry for $CODENAME in /etc/apt to mirror as deb-src"
  log "adding $SRC_LIST"
  {
    echo "# Added by topolvm-rs e2e/scripts/build-control-plane.sh (apt-get source $SRC_PKG)."
    echo "$stanza"
  } >"$SRC_LIST"
}

source_available() { # apt knows source $SRC_PKG (version $SRC_PIN if set)
  local versions
  versions=$(apt-cache showsrc --only-source "$SRC_PKG" 2>/dev/null | awk '/^Version:/ { print $2 }')
  if [[ -n $SRC_PIN ]]; then
    grep -qxF -- "$SRC_PIN" <<<"$versions"
  else
    [[ -n $versions ]]
  fi
}

ensure_packages
if up_to_date; then # e.g. only etcd-server was missing
  report
  exit 0
fi

rm -f "$STAMP"
FETCHED=$WORK/.fetched # holds the source version once apt-get source succeeded
VERSION=""
if [[ -r $FETCHED ]]; then
  VERSION=$(<"$FETCHED")
  if [[ -n $SRC_PIN && $VERSION != "$SRC_PIN" ]]; then VERSION=""; fi
fi
UPSTREAM=${VERSION#*:}
UPSTREAM=${UPSTREAM%-*}
TREE=$WORK/$SRC_PKG-$UPSTREAM
if [[ -z $VERSION || ! -d $TREE ]]; then
  if ! source_available; then
    have_deb_src || add_deb_src
    APT_UPDATED=0
    apt_update
    source_available || die "apt has no source package $SRC_PKG${SRC_PIN:+=$SRC_PIN}"
  fi
  rm -rf "$WORK"
  mkdir -p "$WORK"
  log "apt-get source $SRC_PKG${SRC_PIN:+=$SRC_PIN} into $WORK"
  (cd "$WORK" && apt-get source -q -o APT::Sandbox::User=root "$SRC_PKG${SRC_PIN:+=$SRC_PIN}" >&2)
  dscs=("$WORK/${SRC_PKG}_"*.dsc)
  [[ ${#dscs[@]} == 1 && -r ${dscs[0]} ]] || die "apt-get source left no single .dsc in $WORK"
  VERSION=$(awk '/^Version:/ { print $2; exit }' "${dscs[0]}")
  UPSTREAM=${VERSION#*:}
  UPSTREAM=${UPSTREAM%-*}
  TREE=$WORK/$SRC_PKG-$UPSTREAM
  [[ -d $TREE ]] || die "apt-get source did not create $TREE"
  echo "$VERSION" >"$FETCHED"
fi
log "source: $SRC_PKG $VERSION in $TREE"

# kubectl: Debian's, from the kubernetes-client .deb of the same version,
# extracted (not installed: /usr/bin/kubectl may belong to another package).
rm -rf "$WORK/client"
mkdir -p "$WORK/client"
if ! (cd "$WORK/client" && apt-get download -q -o APT::Sandbox::User=root "$CLIENT_PKG=$VERSION" >&2); then
  apt_update
  (cd "$WORK/client" && apt-get download -q -o APT::Sandbox::User=root "$CLIENT_PKG=$VERSION" >&2) ||
    die "cannot download $CLIENT_PKG=$VERSION"
fi
dpkg-deb -x "$WORK/client/${CLIENT_PKG}_"*.deb "$WORK/client/root"
kubectl_version "$WORK/client/root/usr/bin/kubectl" >/dev/null ||
  die "kubectl from $CLIENT_PKG=$VERSION is not v1.20.x"

# Kubernetes 1.20 vendors modern-go/reflect2 v1.0.1, which reaches into Go runtime internals
# that changed in Go 1.18: built with Debian's Go 1.19, kube-apiserver dies with "fatal error:
# fault" in mapiterinit as soon as it serves a custom resource. v1.0.2 fixes exactly that and is
# API-compatible; Debian packages it, so swap it into vendor/ (offline).
[[ -f $REFLECT2_SRC/reflect2.go ]] || die "$REFLECT2_SRC is missing (package golang-github-modern-go-reflect2-dev)"
rm -rf "$TREE/vendor/github.com/modern-go/reflect2"
cp -r "$REFLECT2_SRC" "$TREE/vendor/github.com/modern-go/reflect2"
sed -i 's|^# github.com/modern-go/reflect2 v1.0.1$|# github.com/modern-go/reflect2 v1.0.2|' "$TREE/vendor/modules.txt"
REFLECT2_V=$(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)
log "vendor: modern-go/reflect2 replaced by Debian's $REFLECT2_V"

# Kubernetes 1.20 vendors kube-openapi 2020-11-13, whose schema type check takes a value for
# null when reflect.DeepEqual(reflect.Zero(T), reflect.ValueOf(v)) -- a comparison of the two
# reflect.Value headers, pointers included. Before Go 1.16 reflect.Zero pointed at fresh memory, so
# this was never true; since Go 1.16 both point at the runtime's shared zero buffer when v is "",
# so kube-apiserver refuses every custom resource holding an empty string ('spec.x in body must be
# of type string: "null"'). Upstream removed the zero-value test (kubernetes/kube-openapi#230, in
# Kubernetes 1.21, issue kubernetes/kubernetes#99804); make the same one-line change here. The
# tree may be reused from an earlier run, so an already patched file is fine; anything else fails.
OPENAPI_TYPE_GO=$TREE/vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go
ZERO_CHECK_OLD='	if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {'
ZERO_CHECK_NEW='	if data == nil {'
if grep -qxF -- "$ZERO_CHECK_OLD" "$OPENAPI_TYPE_GO"; then
  awk -v old="$ZERO_CHECK_OLD" -v new="$ZERO_CHECK_NEW" '$0 == old { $0 = new } { print }' \
    "$OPENAPI_TYPE_GO" >"$OPENAPI_TYPE_GO.new"
  mv "$OPENAPI_TYPE_GO.new" "$OPENAPI_TYPE_GO"
fi
grep -qxF -- "$ZERO_CHECK_NEW" "$OPENAPI_TYPE_GO" && ! grep -qF 'reflect.Zero(reflect.TypeOf(data))' "$OPENAPI_TYPE_GO" ||
  die "could not patch the zero-value check in $OPENAPI_TYPE_GO"
log "vendor: kube-openapi type check patched (\"\" is not null; kubernetes/kube-openapi#230)"

# Build the way Debian's debian/rules does, without building the .deb.
WHAT=""
for c in "${COMPONENTS[@]}"; do WHAT+="${WHAT:+ }cmd/$c"; done
mkdir -p "$TREE/.go/src/k8s.io" "$WORK/home" "$WORK/go-cache"
[[ -L $TREE/.go/src/k8s.io/kubernetes ]] || ln -s ../../.. "$TREE/.go/src/k8s.io/kubernetes"
log "building $WHAT with $(go version) (log: $WORK/build.log); 6-9 min on 2 cores"
start=$SECONDS
# A line a minute while make runs, so a newcomer sees it is alive and where to look.
(
  while sleep 60; do
    last=$(tail -n 1 "$WORK/build.log" 2>/dev/null | cut -c1-100)
    log "still building: $(((SECONDS - start) / 60)) min so far (usually 6-9); last: ${last:-nothing yet}"
  done
) &
heartbeat=$!
trap 'kill "$heartbeat" 2>/dev/null || true' EXIT
# hack/lib/init.sh sets GO111MODULE=off and builds from vendor/ in GOPATH mode
# (so no -mod=vendor); hack/lib/golang.sh puts GOCACHE under _output/ in the tree.
if ! (cd "$TREE" && env -u GOFLAGS -u GOROOT \
  PATH="/usr/lib/go/bin:$PATH" \
  GOPATH="$TREE/.go" \
  GOCACHE="$WORK/go-cache" \
  GOPROXY=off GOTOOLCHAIN=local GOSUMDB=off \
  CGO_ENABLED=0 \
  HOME="$WORK/home" XDG_CACHE_HOME="$WORK/home/.cache" \
  make WHAT="$WHAT") >"$WORK/build.log" 2>&1; then
  kill "$heartbeat" 2>/dev/null || true
  tail -n 40 "$WORK/build.log" >&2
  die "build failed after $((SECONDS - start)) s; see $WORK/build.log (tree kept)"
fi
kill "$heartbeat" 2>/dev/null || true
build_secs=$((SECONDS - start))
log "built in $build_secs s"

OUT=$TREE/_output/bin
[[ -d $OUT ]] || OUT=$TREE/_output/local/bin/$(go env GOOS)/$(go env GOARCH)
cp -f "$WORK/client/root/usr/bin/kubectl" "$OUT/kubectl"
sizes=""
for c in "${COMPONENTS[@]}"; do
  v=$(k8s_binary_version "$OUT/$c") || die "built $c does not report v1.20.x"
  [[ $c != kube-apiserver ]] || K8S_V=$v
done
KUBECTL_V=$(kubectl_version "$OUT/kubectl") || die "kubectl does not report v1.20.x"
# One atomic rename per file: a test bed may be starting these binaries right now.
mkdir -p "$BIN"
for c in "${COMPONENTS[@]}" kubectl; do
  install -m 0755 "$OUT/$c" "$BIN/.$c.new"
  mv -f "$BIN/.$c.new" "$BIN/$c"
  sizes+="size_$c=$(stat -c %s "$BIN/$c")"$'\n'
done

sizes=${sizes%$'\n'}
tmp_stamp=$(mktemp "$CACHE/stamp.XXXXXX")
cat >"$tmp_stamp" <<EOF
source_package=$SRC_PKG
source_version=$VERSION
kubernetes_version=$K8S_V
kubectl_from=$CLIENT_PKG $VERSION
script_sha256=$SELF_SHA
vendor_changes=modern-go/reflect2 from golang-github-modern-go-reflect2-dev $REFLECT2_V; kube-openapi type.go zero-value check as in kubernetes/kube-openapi#230
go_version=$(go env GOVERSION)
build_seconds=$build_secs
built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
$sizes
EOF
chmod 0644 "$tmp_stamp"
mv "$tmp_stamp" "$STAMP"
load_stamp

if [[ $KEEP_SOURCE == 1 ]]; then
  log "keeping source tree $TREE (--keep-source)"
else
  log "removing $WORK (source tree, Go build cache)"
  rm -rf "$WORK"
fi
report
