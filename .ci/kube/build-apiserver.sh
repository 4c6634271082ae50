#!/usr/bin/env bash
# Print the path of a kube-apiserver v1.20.2 binary, building it from Debian 12's
# "kubernetes" source package if ${CREDITSYNC_CACHE:-/var/cache/creditsync} lacks it.
# Also installs etcd-server (the tests' etcd). Progress goes to stderr, the path to stdout.
# A cold build takes several minutes and ~1.5 GB of RAM; later calls return at once.
set -euo pipefail

CACHE=${CREDITSYNC_CACHE:-/var/cache/creditsync}
SRC_LIST=/etc/apt/sources.list.d/creditsync-src.sources
PKGS=(golang-go make rsync dpkg-dev golang-github-modern-go-reflect2-dev
      golang-github-json-iterator-go-dev etcd-server)
GOCODE=/usr/share/gocode/src/github.com

log() { echo "build-apiserver: $*" >&2; }
die() { echo "build-apiserver: ERROR: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (it uses apt-get); rerun with sudo"
export DEBIAN_FRONTEND=noninteractive

# deb-src stanzas mirroring the enabled "Types: deb" stanzas of the deb822 sources.
derive_deb_src() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -e $f && $f != "$SRC_LIST" ]] || continue
    awk '
      function flush() {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no" && uris != "") {
          print "Types: deb-src"; print "URIs: " uris; print "Suites: " suites
          if (comps != "") print "Components: " comps
          if (signed != "") print "Signed-By: " signed
          print ""
        }
        types = uris = suites = comps = signed = enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { if (key == "signed-by") signed = signed "\n" $0; next }
      {
        key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "types") types = val; else if (key == "uris") uris = val
        else if (key == "suites") suites = val; else if (key == "components") comps = val
        else if (key == "signed-by") signed = val; else if (key == "enabled") enabled = val
      }
      END { flush() }
    ' "$f"
  done
}

apt_update() {
  log "apt-get update"
  apt-get update -qq >&2 || die "apt-get update failed; check the apt sources and the network"
}

ensure_sources() {
  local want
  want=$(derive_deb_src)
  [[ -n $want ]] || die "no enabled 'Types: deb' stanza in /etc/apt/sources.list.d/*.sources to derive deb-src from"
  if [[ ! -f $SRC_LIST || $(cat "$SRC_LIST") != "$want" ]]; then
    log "writing $SRC_LIST"
    printf '%s\n' "$want" >"$SRC_LIST"
    apt_update
  fi
}

ensure_packages() {
  local p missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $(apt-cache policy "${missing[0]}" 2>/dev/null) == *Candidate:* ]] || apt_update
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$CACHE/apt-install.log" 2>&1 \
    || { tail -n 20 "$CACHE/apt-install.log" >&2; die "apt-get install failed (log: $CACHE/apt-install.log)"; }
}

# Debian source version apt-get source would fetch, e.g. 1.20.5+really1.20.2-1.1+deb12u1.
source_version() {
  apt-get source --print-uris -qq kubernetes 2>/dev/null \
    | sed -n "s/^'[^']*' kubernetes_\(.*\)\.dsc .*/\1/p" | head -n1
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.build-apiserver.lock"
flock 9   # one build at a time

ensure_sources
ensure_packages
VERSION=$(source_version)
[[ -n $VERSION ]] || { apt_update; VERSION=$(source_version); }
[[ -n $VERSION ]] || die "apt knows no 'kubernetes' source package; is $SRC_LIST valid? (this needs Debian 12)"
OUT_DIR=$CACHE/kube-apiserver-$VERSION
OUT=$OUT_DIR/kube-apiserver
if [[ -x $OUT ]]; then echo "$OUT"; exit 0; fi

BUILD=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
START=$SECONDS
log "fetching kubernetes $VERSION source into $BUILD"
(cd "$BUILD" && apt-get source -qq -o APT::Sandbox::User=root "kubernetes=$VERSION") >"$BUILD/source.log" 2>&1 \
  || { tail -n 20 "$BUILD/source.log" >&2; die "apt-get source kubernetes failed"; }
SRC=$(find "$BUILD" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*')

# The vendored reflect2 1.0.1 crashes under Go >= 1.18: use Debian's newer sources.
for mod in modern-go/reflect2 json-iterator/go; do
  [[ -d $GOCODE/$mod ]] || die "$GOCODE/$mod missing; reinstall the golang-github-*-dev packages"
  rsync -a --delete --exclude '*_test.go' "$GOCODE/$mod/" "$SRC/vendor/github.com/$mod/"
done

log "building kube-apiserver with $(go version | cut -d' ' -f3) (several minutes; log: $BUILD/make.log)"
if ! (cd "$SRC" && env -u GOFLAGS CGO_ENABLED=0 GOCACHE="$BUILD/gocache" HOME="$BUILD" \
        make WHAT=cmd/kube-apiserver) >"$BUILD/make.log" 2>&1; then
  cp "$BUILD/make.log" "$CACHE/build-apiserver-failed.log"
  tail -n 30 "$BUILD/make.log" >&2
  die "make WHAT=cmd/kube-apiserver failed (log kept at $CACHE/build-apiserver-failed.log)"
fi
mkdir -p "$OUT_DIR"
cp -L "$SRC/_output/bin/kube-apiserver" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "built $OUT in $((SECONDS - START))s"
echo "$OUT"
