#!/usr/bin/env bash
# Builds one of the Go tools in this directory (argocd-health, kstatus, promlint, promql) from the Go module proxy and
# caches the binary by content hash (the module's go.mod, go.sum, *.go and the Go version), so a second run
# returns at once. Prints the binary's path on its last line.
#
#   build.sh NAME            build (or reuse) tool NAME
#   build.sh --module MOD@V [GOTOOLCHAIN]
#                            download one module version through the module proxy, print its directory (for
#                            files a module ships: prometheus-operator's CRDs, Argo CD's Lua sandbox); a module
#                            whose go.mod names a newer Go needs that toolchain, e.g. go1.27.3 (fetched by the go
#                            command from the module proxy, cached)
#
# Environment: SCHEMAGATE_GOTOOLS cache root (default ~/.cache/schemagate/gotools), with its own GOCACHE
# inside so builds here do not contend with other Go builds' caches.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${SCHEMAGATE_GOTOOLS:-$HOME/.cache/schemagate/gotools}"
command -v go >/dev/null || { echo "ERROR: Go >= 1.25 is required to build the ecosystem test tools (apt-get install golang)" >&2; exit 2; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly GOCACHE="$ROOT/go-build"
mkdir -p "$ROOT"

if [ "${1:-}" = "--module" ]; then
  [ -n "${2:-}" ] || { echo "usage: build.sh --module MODULE@VERSION [GOTOOLCHAIN]" >&2; exit 2; }
  export GOTOOLCHAIN="${3:-local}"
  go mod download -json "$2" | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["Dir"])'
  exit 0
fi

NAME="${1:?usage: build.sh NAME|--module MOD@VERSION}"
SRC="$HERE/$NAME"
[ -f "$SRC/go.mod" ] || { echo "ERROR: no Go tool named $NAME in $HERE" >&2; exit 2; }
HASH="$( { go version; cd "$SRC" && sha256sum go.mod go.sum ./*.go; } | sha256sum | cut -c1-16)"
OUT="$ROOT/$NAME-$HASH"
if [ -x "$OUT/$NAME" ]; then echo "$OUT/$NAME"; exit 0; fi
exec 9>"$ROOT/.$NAME.lock"
flock 9
if [ -x "$OUT/$NAME" ]; then echo "$OUT/$NAME"; exit 0; fi
START=$(date +%s)
echo "[gotools] building $NAME (cached in $OUT afterwards)" >&2
mkdir -p "$OUT"
(cd "$SRC" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$OUT/$NAME.tmp" .)
mv "$OUT/$NAME.tmp" "$OUT/$NAME"
echo "[gotools] built $NAME in $(( $(date +%s) - START ))s" >&2
echo "$OUT/$NAME"
