#!/usr/bin/env bash
# Builds the images the real node runs, from this repository, with no registry (`make images`):
#   base         Debian bookworm minbase + python3 + python3-venv + ca-certificates, made with mmdebstrap from the
#                configured Debian mirror (for machines that reach no image registry)
#   schemagate   the operator image, from ./Dockerfile with BASE_IMAGE = base
#   example-app  the example application (charts/example-app/image/ + the migrations/foodtruck Alembic project),
#                relying on the injected runner (no schemagate inside), tagged with each of its revisions too
# with buildah (daemonless), into the host's containers-storage, then exported as OCI archives that the test bed
# imports into containerd. The host's CA bundle is mounted read-only at build time only (pip behind a TLS proxy);
# it is never committed into an image.
#
# Cached by content hash: each image is tagged with the hash of everything it is built from (recipe, files, base),
# so a second run rebuilds nothing. The last line printed is the path of a JSON file naming the images, their OCI
# archives, sizes and build times.
#
# Environment:
#   SCHEMAGATE_IMAGES   cache directory of the OCI archives (default ~/.cache/schemagate/images)
#   DEBIAN_MIRROR       Debian mirror for the base (default http://deb.debian.org/debian)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${SCHEMAGATE_IMAGES:-$HOME/.cache/schemagate/images}"
REG="schemagate.test"          # a reserved domain (RFC 2606): these names can never be pulled from anywhere
SUITE="bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PACKAGES="python3,python3-venv,ca-certificates"
CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"
RECIPE_VERSION=1
START=$(date +%s)
log() { echo "[images +$(( $(date +%s) - START ))s] $*" >&2; }
die() { echo "ERROR: $*" >&2; exit 2; }

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v skopeo >/dev/null || need+=(skopeo)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need[*]} (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" uidmap fuse-overlayfs >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" uidmap fuse-overlayfs >&2; } \
      || die "cannot install ${need[*]}: apt-get install buildah skopeo mmdebstrap"
  else
    die "missing ${need[*]}: apt-get install buildah skopeo mmdebstrap (as root)"
  fi
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9   # one build at a time on this machine

# hash of files (path and content) under the given paths, relative to $ROOT, ignoring caches and build output
tree_hash() {
  (cd "$ROOT" && python3 - "$@" <<'PY'
import hashlib, os, sys
h = hashlib.sha256()
for top in sys.argv[1:]:
    paths = [top] if os.path.isfile(top) else sorted(
        os.path.join(d, f) for d, ds, fs in os.walk(top)
        for f in fs if "__pycache__" not in d and ".egg-info" not in d and not f.endswith(".pyc"))
    if not paths or not os.path.exists(top):
        sys.exit(f"missing build input {top}")
    for p in sorted(paths):
        h.update(p.encode() + b"\0" + open(p, "rb").read() + b"\0")
print(h.hexdigest()[:16])
PY
  )
}
text_hash() { printf '%s' "$*" | sha256sum | cut -c1-16; }
exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }
size_of() { buildah images --noheading --format '{{.Size}}' "$1" 2>/dev/null | head -1; }

ca_args=()
if [ -f "$CA_BUNDLE" ]; then ca_args=(-v "$CA_BUNDLE:$CA_BUNDLE:ro" --build-arg "PIP_CERT_FILE=$CA_BUNDLE"); fi

declare -A SECONDS_OF=()

# --- base image -------------------------------------------------------------------------------------------------
BASE_KEY="$(text_hash "v$RECIPE_VERSION $SUITE $MIRROR minbase $BASE_PACKAGES")"
BASE="$REG/debian-python:$SUITE-$BASE_KEY"
if exists "$BASE"; then
  SECONDS_OF[base]=0
else
  t0=$(date +%s); log "making $BASE with mmdebstrap ($SUITE minbase + $BASE_PACKAGES)"
  T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
  nice mmdebstrap --variant=minbase --include="$BASE_PACKAGES" --format=tar \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='Acquire::Retries "3"' \
    "$SUITE" "$T/rootfs.tar" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb ${MIRROR%/debian}/debian-security $SUITE-security main" </dev/null >&2
  c="$(buildah from --pull=never scratch)"
  buildah add --quiet "$c" "$T/rootfs.tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd '["python3"]' --label "org.opencontainers.image.description=Debian $SUITE minbase + $BASE_PACKAGES (mmdebstrap)" "$c"
  buildah commit --quiet --rm "$c" "$BASE" >/dev/null
  rm -f "$T/rootfs.tar"
  SECONDS_OF[base]=$(( $(date +%s) - t0 ))
fi

# --- operator image ---------------------------------------------------------------------------------------------
OP_KEY="$(text_hash "$BASE_KEY docker-format $(tree_hash Dockerfile .dockerignore pyproject.toml README.md LICENSE operator)")"
OPERATOR="$REG/schemagate:$OP_KEY"
if exists "$OPERATOR"; then
  SECONDS_OF[schemagate]=0
else
  t0=$(date +%s); log "building $OPERATOR from Dockerfile on $BASE"
  nice buildah bud --quiet --pull=never --layers=false --format=docker --build-arg "BASE_IMAGE=$BASE" "${ca_args[@]}" \
    -f "$ROOT/Dockerfile" -t "$OPERATOR" "$ROOT" >&2
  SECONDS_OF[schemagate]=$(( $(date +%s) - t0 ))
fi

# --- example application image ------------------------------------------------------------------------------------
APP_KEY="$(text_hash "$BASE_KEY docker-format $(tree_hash charts/example-app/image migrations/foodtruck)")"
APP_REPO="$REG/example-app"
APP="$APP_REPO:$APP_KEY"
mapfile -t VERSIONS < <(cd "$ROOT/migrations/foodtruck/versions" && ls -1 ./*.py | sed -E 's|^\./([0-9]+)_.*|\1|' | sort -u)
if exists "$APP"; then
  SECONDS_OF[example-app]=0
else
  t0=$(date +%s); log "building $APP (revisions ${VERSIONS[*]})"
  CTX="$(mktemp -d)"
  cp "$ROOT/charts/example-app/image/Dockerfile" "$ROOT/charts/example-app/image/server.py" "$CTX/"
  mkdir "$CTX/alembic"
  (cd "$ROOT/migrations/foodtruck" && tar cf - --exclude=__pycache__ --exclude='*.pyc' .) | tar xf - -C "$CTX/alembic"
  nice buildah bud --quiet --pull=never --layers=false --format=docker --build-arg "BASE_IMAGE=$BASE" "${ca_args[@]}" \
    -f "$CTX/Dockerfile" -t "$APP" "$CTX" >&2
  rm -rf "$CTX"
  SECONDS_OF[example-app]=$(( $(date +%s) - t0 ))
fi

# --- OCI archives for containerd ------------------------------------------------------------------------------------
archive() {  # image -> path of its OCI archive (made once)
  local img="$1" f; f="$CACHE/$(echo "$img" | tr '/:' '__').oci.tar"
  if [ ! -s "$f" ]; then
    log "exporting $img"
    skopeo copy --quiet "containers-storage:$img" "oci-archive:$f.tmp:$img" >&2 && mv "$f.tmp" "$f"
  fi
  echo "$f"
}
OP_TAR="$(archive "$OPERATOR")"; APP_TAR="$(archive "$APP")"
# older images and archives are removed (each operator image is ~470 MB): per repository the newest KEEP images
# stay (other work trees on this machine build their own versions), archives not used for a day go
KEEP=4
find "$CACHE" -maxdepth 1 -name '*.oci.tar' -mmin +1440 ! -path "$OP_TAR" ! -path "$APP_TAR" -delete
touch "$OP_TAR" "$APP_TAR"
for keep in "$BASE" "$OPERATOR" "$APP"; do
  buildah images --noheading --format '{{.CreatedAtRaw}}|{{.Name}}:{{.Tag}}' --filter "reference=${keep%:*}" \
    | sort -r | tail -n +$((KEEP + 1)) | cut -d'|' -f2 | while read -r old; do
      if [ "$old" != "$keep" ]; then log "removing $old"; buildah rmi --force "$old" >/dev/null 2>&1 || true; fi
    done
done

OUT="$CACHE/images-$(text_hash "$BASE $OPERATOR $APP").json"
python3 - "$OUT" <<PY
import json, sys
json.dump({
  "base": {"image": "$BASE", "size": "$(size_of "$BASE")", "build_seconds": ${SECONDS_OF[base]}},
  "schemagate": {"image": "$OPERATOR", "archive": "$OP_TAR", "size": "$(size_of "$OPERATOR")",
                 "build_seconds": ${SECONDS_OF[schemagate]}},
  "example-app": {"image": "$APP", "archive": "$APP_TAR", "size": "$(size_of "$APP")",
                  "build_seconds": ${SECONDS_OF[example-app]}, "repository": "$APP_REPO",
                  "versions": "${VERSIONS[*]}".split()},
}, open(sys.argv[1], "w"), indent=2)
PY
log "images up to date: $BASE $OPERATOR $APP"
echo "$OUT"
