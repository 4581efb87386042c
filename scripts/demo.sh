#!/usr/bin/env bash
# The one-command demo: the whole local stack provisioning a claim as a user would ask for it.
# Starts (target/debug/topolvm-local-stack, embedded default: two nodes with a 4 GiB volume group
# each on loop devices) a Kubernetes control plane with kube-scheduler asking topolvm-scheduler,
# lvmd and topolvm-node per node, topolvm-controller with its pod webhook, and a stand-in for the
# CSI sidecars (they cannot run here); then applies a StorageClass, a claim and a pod with
# kubectl, shows the claim Bound, its PV, LogicalVolume and LV, expands the claim, deletes it, and
# tears everything down. Needs root. Pods are scheduled but never run: there is no kubelet.
#
# On a machine without device-mapper (like this project's build machines) LVM runs in
# metadata-only mode: volumes are created, resized and removed in the volume group's metadata
# but not activated.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '%s\n' "$*"; }

step "set-up: packages, our binaries, the Kubernetes 1.20 binaries of the test bed (a fresh machine: about 20 min, with progress below; then seconds)"
scripts/setup.sh
e2e/scripts/build-control-plane.sh
cargo build --quiet -p lvmd -p topolvm-node -p topolvm-controller -p topolvm-scheduler -p topolvm-e2e --bins

work=$(mktemp -d /tmp/topolvm-demo.XXXXXX)
stack_pid=""
cleanup() {
    set +e
    if [[ -n $stack_pid ]]; then
        kill -TERM "$stack_pid" 2>/dev/null
        wait "$stack_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "starting the local stack (logs: $work/stack.log)"
"${CARGO_TARGET_DIR:-target}"/debug/topolvm-local-stack --ready-file "$work/ready" >"$work/stack.log" 2>&1 &
stack_pid=$!
for _ in $(seq 300); do
    [[ -s $work/ready ]] && break
    kill -0 "$stack_pid" 2>/dev/null || { tail -n 40 "$work/stack.log"; echo "demo: the stack did not start" >&2; exit 1; }
    sleep 1
done
[[ -s $work/ready ]] || { tail -n 40 "$work/stack.log"; echo "demo: the stack did not start in 5 minutes" >&2; exit 1; }
# shellcheck disable=SC1091
source "$work/ready"
export KUBECONFIG LVM_SYSTEM_DIR
kubectl() { /var/cache/topolvm-rs/k8s/bin/kubectl "$@"; }
show() { printf '$ %s\n' "$*"; "$@"; }
lvs_of() { LC_ALL=C LVM_SUPPRESS_FD_WARNINGS=1 lvm lvs --units m -o lv_name,lv_size,lv_tags "$1" 2>/dev/null; }
# Polls "$@" (a command printing one value) until it prints $want; 60 s at most.
wait_for() {
    local want=$1 what=$2; shift 2
    for _ in $(seq 600); do
        [[ $("$@" 2>/dev/null) == "$want" ]] && return 0
        sleep 0.1
    done
    echo "demo: timed out waiting for $what" >&2
    exit 1
}

say "Up: kube-apiserver, kube-scheduler, kube-controller-manager, topolvm-scheduler, topolvm-controller,"
say "and on node-a and node-b lvmd and topolvm-node, each node with its own volume group."
step "the nodes, with the free bytes topolvm-node publishes for the device class ssd"
show kubectl get nodes -o 'custom-columns=NODE:.metadata.name,FREE-SSD:.metadata.annotations.capacity\.topolvm\.io/ssd,TOPOLOGY:.metadata.labels.topology\.topolvm\.io/node'

step "a StorageClass, a 1 GiB claim and a pod using it, as a user applies them"
cat >"$work/app.yaml" <<'YAML'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: topolvm-provisioner
provisioner: topolvm.io
parameters:
  csi.storage.k8s.io/fstype: ext4
  topolvm.io/device-class: ssd
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: default
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: topolvm-provisioner
  resources:
    requests:
      storage: 1Gi
---
apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: default
spec:
  automountServiceAccountToken: false
  containers:
    - name: app
      image: registry.invalid/app
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: data
YAML
cat "$work/app.yaml"
show kubectl apply -f "$work/app.yaml"

step "the pod webhook wrote what the pod needs, so kube-scheduler asks topolvm-scheduler"
show kubectl get pod app -o 'custom-columns=POD:.metadata.name,NEEDS-SSD:.metadata.annotations.capacity\.topolvm\.io/ssd,RESOURCE:.spec.containers[0].resources.requests.topolvm\.io/capacity'
wait_for Bound "the claim to be Bound" kubectl get pvc data -o 'jsonpath={.status.phase}'
node=$(kubectl get pvc data -o 'jsonpath={.metadata.annotations.volume\.kubernetes\.io/selected-node}')
pv=$(kubectl get pvc data -o 'jsonpath={.spec.volumeName}')
say "kube-scheduler placed the pod on $node; topolvm-controller made a LogicalVolume there, topolvm-node"
say "asked lvmd for the LV, and the volume was bound to the claim:"
show kubectl get pvc data
show kubectl get pv "$pv" -o 'custom-columns=PV:.metadata.name,SIZE:.spec.capacity.storage,HANDLE:.spec.csi.volumeHandle,NODE:.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]'
show kubectl get logicalvolumes -o 'custom-columns=LOGICALVOLUME:.metadata.name,NODE:.spec.nodeName,CLASS:.spec.deviceClass,SIZE:.spec.size,VOLUME-ID:.status.volumeID'
vg_var="VG_${node//-/_}"
vg=${!vg_var}
say "and the LV in $node's volume group $vg (named by the volume ID, tagged as ours):"
show lvs_of "$vg"
step "the node's free bytes dropped by the volume's size"
show kubectl get nodes -o 'custom-columns=NODE:.metadata.name,FREE-SSD:.metadata.annotations.capacity\.topolvm\.io/ssd'

step "expanding the claim to 2 GiB"
show kubectl patch pvc data -p '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}'
wait_for 2147483648 "the PV to grow" kubectl get pv "$pv" -o 'jsonpath={.spec.capacity.storage}'
show kubectl get pv "$pv" -o 'custom-columns=PV:.metadata.name,SIZE:.spec.capacity.storage'
show lvs_of "$vg"
say "(kubelet would now grow the filesystem on the node: NodeExpandVolume)"

step "deleting the pod and the claim"
show kubectl delete pod app --grace-period=0 --force
show kubectl delete pvc data
wait_for "" "the PV to go" kubectl get pv -o 'jsonpath={.items[*].metadata.name}'
wait_for "" "the LogicalVolume to go" kubectl get logicalvolumes -o 'jsonpath={.items[*].metadata.name}'
say "the PV, the LogicalVolume and the LV are gone, and the space is back:"
show kubectl get pv,logicalvolumes
show lvs_of "$vg"
show kubectl get nodes -o 'custom-columns=NODE:.metadata.name,FREE-SSD:.metadata.annotations.capacity\.topolvm\.io/ssd'

step "tearing the stack down"
kill -TERM "$stack_pid"
wait "$stack_pid" || true
stack_pid=""
say "done: processes stopped, volume groups and loop devices removed."
