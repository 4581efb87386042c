#!/usr/bin/env bash
# Smoke test of the cached Kubernetes 1.20 control plane built by
# build-control-plane.sh: starts etcd, kube-apiserver, kube-controller-manager
# and kube-scheduler (with an HTTP scheduler extender) on loopback, with
# self-made certificates, checks that each one works, and tears everything
# down again (also on failure or Ctrl-C). Nothing is left behind.
#
# Usage: e2e/scripts/smoke-control-plane.sh
#   KEEP_TMP=1  keep the temp dir (certs, configs, logs) for inspection
#
# Needs: curl, openssl, jq, python3 (for the fake extender; that part is skipped
# without it). The flags used here are written down in README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T0=$(date +%s.%N)

log() { echo "smoke: $*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}
since() { # seconds since $1 (date +%s.%N), 1 decimal
  awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

command -v curl >/dev/null || die "curl is missing"
command -v openssl >/dev/null || die "openssl is missing"
command -v jq >/dev/null || die "jq is missing"

env_out=$("$HERE/build-control-plane.sh")
eval "$env_out"
BIN=$TOPOLVM_K8S_BIN
ETCD=$TOPOLVM_ETCD
KUBECTL=$TOPOLVM_KUBECTL

TMP=$(mktemp -d "${TMPDIR:-/tmp}/topolvm-cp-smoke.XXXXXX")
PIDS=()
NAMES=()

cleanup() {
  local rc=$? i pid n
  set +e
  trap - EXIT INT TERM
  # Stop in reverse start order: clients first, etcd last.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for ((n = 0; n < 100; n++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "${NAMES[i]} (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
  done
  if ((rc != 0)); then
    for n in "$TMP"/*.log; do
      [[ -r $n ]] || continue
      log "---- last lines of $n"
      tail -n 15 "$n" >&2
    done
  fi
  if [[ ${KEEP_TMP:-0} == 1 ]]; then
    log "kept $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # start NAME CMD... : runs CMD in the background, output in $TMP/NAME.log
  local name=$1
  shift
  "$@" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
}

alive() { # alive NAME: the process started as NAME still runs
  local i
  for i in "${!NAMES[@]}"; do
    [[ ${NAMES[i]} == "$1" ]] && { kill -0 "${PIDS[i]}" 2>/dev/null; return; }
  done
  return 1
}

wait_for() { # wait_for SECONDS WHAT PROCESS CMD...: retry CMD until it succeeds
  local secs=$1 what=$2 proc=$3 t
  shift 3
  t=$(date +%s.%N)
  until "$@" >/dev/null 2>&1; do
    alive "$proc" || die "$proc exited while waiting for $what"
    awk -v a="$t" -v b="$(date +%s.%N)" -v s="$secs" 'BEGIN { exit !(b - a > s) }' &&
      die "timed out after $secs s waiting for $what"
    sleep 0.2
  done
}

USED_PORTS=" "
free_port() { # free_port VAR: a port nobody listens on, below the ephemeral range
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port found"
}

free_port ETCD_PORT
free_port ETCD_PEER_PORT
free_port API_PORT
free_port CM_PORT
free_port SCHED_PORT
free_port SCHED_HEALTH_PORT
free_port EXT_PORT

# ---- certificates --------------------------------------------------------------
PKI=$TMP/pki
mkdir -p "$PKI"
openssl req -x509 -new -nodes -newkey rsa:2048 -days 2 -subj "/CN=topolvm-rs-e2e-ca" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null

cert() { # cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
  local name=$1 subj=$2 eku=$3 san=${4:-}
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -z $san ]] || echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl req -new -nodes -newkey rsa:2048 -subj "$subj" \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 2 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
}
cert apiserver "/CN=kube-apiserver" serverAuth \
  "IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
cert admin "/O=system:masters/CN=topolvm-e2e-admin" clientAuth
cert scheduler "/CN=system:kube-scheduler" clientAuth
cert controller-manager "/CN=system:kube-controller-manager" clientAuth
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

kubeconfig() { # kubeconfig NAME: $TMP/NAME.kubeconfig for $PKI/NAME.{crt,key}
  cat >"$TMP/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $1
  user:
    client-certificate: $PKI/$1.crt
    client-key: $PKI/$1.key
contexts:
- name: e2e
  context:
    cluster: e2e
    user: $1
current-context: e2e
EOF
}
kubeconfig admin
kubeconfig scheduler
kubeconfig controller-manager
k() { "$KUBECTL" --kubeconfig "$TMP/admin.kubeconfig" --request-timeout=10s "$@"; }

# ---- etcd -------------------------------------------------------------------------
start etcd "$ETCD" --name e2e --data-dir "$TMP/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster-state new \
  --logger=zap
t=$(date +%s.%N)
wait_for 30 "etcd /health" etcd \
  sh -c "curl -fsS http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"
ETCD_READY=$(since "$t")
log "etcd $TOPOLVM_ETCD_VERSION ready on 127.0.0.1:$ETCD_PORT in ${ETCD_READY} s"

# ---- kube-apiserver -----------------------------------------------------------------
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --secure-port="$API_PORT" \
  --insecure-port=0 \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --cert-dir="$TMP/apiserver-certs" \
  --client-ca-file="$PKI/ca.crt" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc \
  --authorization-mode=Node,RBAC \
  --disable-admission-plugins=TaintNodesByCondition,ServiceAccount \
  --service-cluster-ip-range=10.0.0.0/24 \
  --endpoint-reconciler-type=none
t=$(date +%s.%N)
wait_for 120 "kube-apiserver /readyz" kube-apiserver k get --raw /readyz
API_READY=$(since "$t")
log "kube-apiserver $TOPOLVM_K8S_VERSION ready on 127.0.0.1:$API_PORT in ${API_READY} s"

k get ns
k api-versions | grep apiextensions
k get --raw /version | grep -q '"gitVersion": "v1.20' || die "/version is not v1.20"
# --endpoint-reconciler-type=none: the Service exists, without endpoints
wait_for 30 "service default/kubernetes" kube-apiserver k get service kubernetes

# ---- fake scheduler extender (records the verbs it is called with) ------------------
EXTENDER=0
if command -v python3 >/dev/null; then
  cat >"$TMP/extender.py" <<'EOF'
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_POST(self):
        args = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        # nodeCacheCapable: false -> the scheduler sends full Node objects in "Nodes"
        names = [n["metadata"]["name"] for n in (args.get("Nodes") or {}).get("items", [])]
        pod = args["Pod"]["metadata"]["name"]
        print("CALL", self.path, pod, ",".join(names), flush=True)
        if self.path.endswith("/predicate"):
            out = {"Nodes": args["Nodes"], "FailedNodes": {}, "Error": ""}
        elif self.path.endswith("/prioritize"):
            out = [{"Host": n, "Score": 5} for n in names]
        else:
            self.send_error(404)
            return
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
  start extender python3 "$TMP/extender.py" "$EXT_PORT"
  EXTENDER=1
else
  log "no python3: the scheduler is started with the extender config, but its calls are not checked"
fi

# ---- kube-controller-manager --------------------------------------------------------
start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$TMP/controller-manager.kubeconfig" \
  --secure-port="$CM_PORT" \
  --port=0 \
  --bind-address=127.0.0.1 \
  --leader-elect=false \
  --controllers='*,-nodelifecycle,-nodeipam,-route,-service,-cloud-node-lifecycle' \
  --service-account-private-key-file="$PKI/sa.key" \
  --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" \
  --cluster-signing-key-file="$PKI/ca.key" \
  --use-service-account-credentials=true
t=$(date +%s.%N)
wait_for 60 "kube-controller-manager /healthz" kube-controller-manager \
  curl -fsSk "https://127.0.0.1:$CM_PORT/healthz"
wait_for 60 "kube-controller-manager to start controllers" kube-controller-manager \
  grep -q 'Started "serviceaccount"' "$TMP/kube-controller-manager.log"
CM_READY=$(since "$t")
log "kube-controller-manager serving on 127.0.0.1:$CM_PORT, controllers started in ${CM_READY} s"

# ---- kube-scheduler -----------------------------------------------------------------
# With --config, v1.20 ignores --kubeconfig/--leader-elect/--port: they go in the file.
# healthz/metrics (insecure, deprecated) cannot be disabled from a v1beta1 file:
# it only takes a valid host:port (port 1-65535), so bind it to loopback.
cat >"$TMP/scheduler-config.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1beta1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $TMP/scheduler.kubeconfig
leaderElection:
  leaderElect: false
healthzBindAddress: 127.0.0.1:$SCHED_HEALTH_PORT
metricsBindAddress: 127.0.0.1:$SCHED_HEALTH_PORT
extenders:
- urlPrefix: http://127.0.0.1:$EXT_PORT/scheduler
  filterVerb: predicate
  prioritizeVerb: prioritize
  nodeCacheCapable: false
  weight: 1
  managedResources:
  - name: topolvm.io/capacity
    ignoredByScheduler: true
EOF
start kube-scheduler "$BIN/kube-scheduler" \
  --config="$TMP/scheduler-config.yaml" \
  --secure-port="$SCHED_PORT" \
  --bind-address=127.0.0.1 \
  --v=2
t=$(date +%s.%N)
wait_for 60 "kube-scheduler /healthz" kube-scheduler curl -fsSk "https://127.0.0.1:$SCHED_PORT/healthz"
wait_for 60 "kube-scheduler to start" kube-scheduler \
  grep -q 'Starting Kubernetes Scheduler version v1.20' "$TMP/kube-scheduler.log"
SCHED_READY=$(since "$t")
log "kube-scheduler serving on 127.0.0.1:$SCHED_PORT in ${SCHED_READY} s"

# ---- functional checks -------------------------------------------------------------
# controller-manager: the serviceaccount and tokens controllers act on a new namespace.
k create namespace smoke
wait_for 60 "serviceaccount smoke/default with a token secret" kube-controller-manager \
  sh -c "'$KUBECTL' --kubeconfig '$TMP/admin.kubeconfig' -n smoke get sa default -o jsonpath='{.secrets[0].name}' | grep -q ."
log "controller-manager created serviceaccount smoke/default and its token"

# scheduler: hand-made Nodes (no kubelet), then Pods get bound to one of them.
# Two nodes, so that the scheduler scores (calls the extender's prioritize).
for n in smoke-node-1 smoke-node-2; do
  k apply -f - <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $n
  labels:
    kubernetes.io/hostname: $n
status:
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
  conditions:
  - type: Ready
    status: "True"
    reason: KubeletReady
    message: fake
    lastHeartbeatTime: "2021-01-01T00:00:00Z"
    lastTransitionTime: "2021-01-01T00:00:00Z"
EOF
done
taints=$(k get nodes -o jsonpath='{.items[*].spec.taints}')
[[ -z $taints ]] || die "hand-made nodes got taints: $taints"
pod_yaml() { # pod_yaml NAME [with-capacity]
  local res="cpu: 100m"
  if [[ -n ${2:-} ]]; then res+=', topolvm.io/capacity: "1"'; fi
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: smoke
spec:
  containers:
  - name: c
    image: example.invalid/none
    resources:
      requests: {$res}
      limits: {$res}
EOF
}
pod_yaml plain | k apply -f -
pod_yaml with-capacity yes | k apply -f -
for p in plain with-capacity; do
  wait_for 60 "pod smoke/$p to be bound" kube-scheduler \
    sh -c "'$KUBECTL' --kubeconfig '$TMP/admin.kubeconfig' -n smoke get pod $p -o jsonpath='{.spec.nodeName}' | grep -q smoke-node-"
done
grep -q '"Successfully bound pod to node" pod="smoke/with-capacity"' "$TMP/kube-scheduler.log" ||
  die "kube-scheduler log does not show the binding"
log "scheduler bound pods: $(k -n smoke get pods -o jsonpath='{range .items[*]}{.metadata.name}->{.spec.nodeName} {end}')"
if ((EXTENDER)); then
  grep -q 'CALL /scheduler/predicate with-capacity smoke-node-1,smoke-node-2' "$TMP/extender.log" ||
    die "extender filter was not called for smoke/with-capacity with both nodes"
  grep -q 'CALL /scheduler/prioritize with-capacity' "$TMP/extender.log" ||
    die "extender prioritize was not called for smoke/with-capacity"
  if grep -q ' plain ' "$TMP/extender.log"; then
    die "extender was called for a pod without topolvm.io/capacity"
  fi
  log "extender called for smoke/with-capacity only: $(tr '\n' ';' <"$TMP/extender.log")"
fi

# apiserver: a custom resource keeps its empty strings. A real API server stores "" as "";
# built with Go >= 1.16, 1.20's vendored kube-openapi took "" for null and refused it with
# 'spec.str in body must be of type string: "null"' (build-control-plane.sh patches that). Created
# once with kubectl and once with a plain POST, its status written through the subresource,
# then read back: every zero value as sent, no null anywhere in spec or status.
k apply -f - <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: zeros.smoke.topolvm.io
spec:
  group: smoke.topolvm.io
  names: {kind: Zero, listKind: ZeroList, plural: zeros, singular: zero}
  scope: Cluster
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              # (no YAML 1.1 booleans such as `n` or `y` as keys: kubectl would read `false`)
              str: {type: string}
              int: {type: integer}
              bool: {type: boolean}
              list: {type: array, items: {type: string}}
              obj: {type: object, properties: {str: {type: string}}}
          status:
            type: object
            properties:
              message: {type: string}
EOF
k wait --for=condition=Established --timeout=30s crd/zeros.smoke.topolvm.io >/dev/null
ZEROS=apis/smoke.topolvm.io/v1/zeros
zero_json() { # zero_json NAME: a Zero whose spec holds only zero values
  printf '{"apiVersion": "smoke.topolvm.io/v1", "kind": "Zero", "metadata": {"name": "%s"},
    "spec": {"str": "", "int": 0, "bool": false, "list": [""], "obj": {"str": ""}}}' "$1"
}
api() { # api METHOD PATH [CONTENT_TYPE BODY]: the response body on stdout; fails unless 2xx
  local code body=()
  if (($# > 2)); then body=(-H "Content-Type: $3" --data-binary "$4"); fi
  code=$(curl -sS -o "$TMP/api.out" -w '%{http_code}' -X "$1" "${body[@]}" \
    --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$API_PORT/$2")
  [[ $code == 2?? ]] || die "$1 /$2 answered $code: $(cat "$TMP/api.out")"
  cat "$TMP/api.out"
}
zero_json zero-kubectl | k create -f - >/dev/null || die "kubectl create of a Zero with empty strings"
api POST "$ZEROS" application/json "$(zero_json zero-post)" >/dev/null
api PATCH "$ZEROS/zero-post/status" application/merge-patch+json '{"status": {"message": ""}}' >/dev/null
for z in zero-kubectl zero-post; do
  got=$(api GET "$ZEROS/$z")
  spec=$(jq -c .spec <<<"$got")
  [[ $spec == '{"bool":false,"int":0,"list":[""],"obj":{"str":""},"str":""}' ]] ||
    die "$z: spec came back as $spec"
  nulls=$(jq -c '[.spec, .status | paths(. == null) | map(tostring) | join(".")]' <<<"$got")
  [[ $nulls == '[]' ]] || die "$z: null in $nulls"
done
status=$(api GET "$ZEROS/zero-post" | jq -c .status)
[[ $status == '{"message":""}' ]] || die "zero-post: status came back as $status"
log "custom resources with empty strings stored as sent (kubectl create, POST, status PATCH)"

for c in kube-apiserver kube-controller-manager kube-scheduler; do
  alive "$c" || die "$c died"
done
# Every socket our processes listen on must be on loopback (1.20's kube-apiserver
# --insecure-port, kube-controller-manager --port and kube-scheduler's healthz
# default to 8080, 0.0.0.0:10252 and 0.0.0.0:10251).
if command -v ss >/dev/null; then
  listening=""
  for i in "${!PIDS[@]}"; do
    while read -r addr; do
      [[ $addr == 127.0.0.1:* ]] || die "${NAMES[i]} listens on $addr, not on loopback"
      listening+=" ${NAMES[i]}=$addr"
    done < <(ss -Hltnp | awk -v p="pid=${PIDS[i]}," 'index($0, p) { print $4 }')
  done
  log "listening, all on loopback:$listening"
fi
log "timings: etcd ready ${ETCD_READY} s, kube-apiserver start->ready ${API_READY} s," \
  "controller-manager ${CM_READY} s, scheduler ${SCHED_READY} s, whole smoke test $(since "$T0") s"
log "PASSED"
