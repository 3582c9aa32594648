#!/usr/bin/env bash
# Builds lode's image corpus: real Debian/Python images as OCI image layouts,
# offline except for the package registries (Debian mirror, PyPI).
#
#   scripts/corpus.sh [--verify] [IMAGE...]     (default: all images)
#
# IMAGE is one of: debian python app-a app-b app-c big docker (app-a as a
# docker-archive), or fn (a Lambda function image; built only when named). Output goes to ${LODE_CORPUS:-target/corpus}:
#
#   debian/ python/ app-a/ app-b/ app-c/ big/   OCI image layouts, ref "latest"
#   app-a.docker.tar                     docker-archive of app-a (skopeo)
#   layers/NAME.{blob,json}              each layer built ONCE; images hard-link these blobs
#   build/                               rootfs trees and overlay upper dirs the layers come from
#   stamps/                              one stamp per finished layer and image
#
# Images and their layers (bottom first):
#   debian = [debian]                     debootstrap --variant=minbase bookworm   (gzip)
#   python = debian + [python]            apt-get install python3                  (gzip)
#   app-a  = python + [app-a]             pip: requests + app.py                   (gzip)
#   app-b  = python + [app-b]             pip: flask + app.py                      (plain tar)
#   app-c  = python + [app-c]             pip: flask boto3 + app.py                (gzip; ~2,460 files)
#   big    = python + [toolchain] + [sci] apt: gcc/g++/gfortran/clang/llvm (zstd); pip: numpy/scipy/pandas/scikit-learn (gzip)
#   fn     = app-a + [fn]                 pip: awslambdaric + a handler as app.py; CMD python3 -m awslambdaric app.handler, WORKDIR /app
#
# Apt layers are made the way a container build makes them: an overlayfs
# over the lower layers' trees, apt-get in a chroot of the merged view, and
# the upper directory turned into the layer (whiteouts for deletions).
# Idempotent: whatever has a stamp is skipped; delete stamps/X to rebuild X
# (and the images above it). --verify also flattens every built image with
# target/release/lode, runs e2fsck -fn, loop-mounts it and runs a check
# program from it in a chroot. Needs root (debootstrap, chroot, mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

VERIFY=0
IMAGES=()
for a in "$@"; do
  case $a in
    --verify) VERIFY=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    debian|python|app-a|app-b|app-c|big|docker|fn) IMAGES+=("$a") ;;
    *) echo "corpus.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(debian python app-a app-b big docker)

if [ "$(id -u)" -ne 0 ]; then
  echo "corpus.sh: needs root (debootstrap, chroot, overlay and loop mounts); re-run with sudo" >&2
  exit 1
fi

mkdir -p "${LODE_CORPUS:-target/corpus}"
CORPUS=$(realpath "${LODE_CORPUS:-target/corpus}")
LAYERS=$CORPUS/layers
BUILD=$CORPUS/build
STAMPS=$CORPUS/stamps
CACHE=$CORPUS/cache
mkdir -p "$LAYERS" "$BUILD" "$STAMPS" "$CACHE"
OCI="python3 $REPO/scripts/ocilayout.py"
SUITE=bookworm
PYVER=3.11
SITE=usr/local/lib/python$PYVER/dist-packages
# Fixed time for files the corpus itself writes (pip layers, app.py).
EPOCH=${SOURCE_DATE_EPOCH:-1704067200}

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

# ---------------------------------------------------------------- tools

ensure_tools() {
  local need=() pair cmd pkg
  for pair in debootstrap:debootstrap skopeo:skopeo zstd:zstd gzip:gzip chroot:coreutils \
              mkfs.ext4:e2fsprogs; do
    cmd=${pair%%:*}; pkg=${pair##*:}
    command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
  done
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
}

# The Debian mirror this machine's apt uses for $SUITE (read at run time).
debian_mirror() {
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk -v suite="$SUITE" '
      function check() { if (u != "" && s) { print u; found = 1; exit } u = ""; s = 0 }
      /^[[:space:]]*$/ { check(); next }
      /^URIs:/ { u = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) s = 1 }
      END { if (!found) check() }' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list)
  fi
  [ -n "$m" ] || { echo "corpus.sh: no Debian mirror for $SUITE in /etc/apt/sources*" >&2; exit 1; }
  echo "$m"
}

# ---------------------------------------------------------------- mounts

MOUNTS=()
cleanup_mounts() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
  MOUNTS=()
}
trap cleanup_mounts EXIT

# ---------------------------------------------------------------- layers

have_layer() { [ -f "$STAMPS/layer-$1" ] && [ -f "$LAYERS/$1.json" ]; }
stamp_layer() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["digest"])' "$LAYERS/$1.json" >"$STAMPS/layer-$1"; }

layer_debian() {
  have_layer debian && return
  local root=$BUILD/debian.rootfs mirror
  mirror=$(debian_mirror)
  log "layer debian: debootstrap --variant=minbase $SUITE ($mirror)"
  rm -rf "$root"
  mkdir -p "$CACHE/debootstrap"
  debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" "$SUITE" "$root" "$mirror" \
    >"$BUILD/debootstrap.log" 2>&1 || { tail -20 "$BUILD/debootstrap.log" >&2; exit 1; }
  # What a container base image leaves out: device nodes, host identity,
  # downloaded package lists and archives, debootstrap's own log.
  rm -rf "${root:?}"/dev/* "$root"/proc/* "$root"/sys/* "$root"/run/* \
         "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
         "$root"/var/log/bootstrap.log "$root"/etc/hostname "$root"/etc/resolv.conf
  $OCI layer --src "$root" --out "$LAYERS/debian" --compress gzip \
    --created-by "debootstrap --variant=minbase $SUITE"
  stamp_layer debian
}

# apt_layer NAME COMPRESS "LOWER_DIRS (bottom first)" PACKAGES...
apt_layer() {
  local name=$1 compress=$2 lowers=$3; shift 3
  have_layer "$name" && return
  log "layer $name: apt-get install $*"
  local up=$BUILD/$name.upper work=$BUILD/$name.work merged=$BUILD/$name.merged lowerdir="" d
  for d in $lowers; do lowerdir="$BUILD/$d${lowerdir:+:$lowerdir}"; done
  rm -rf "$up" "$work"; mkdir -p "$up" "$work" "$merged"
  mount -t overlay overlay \
    -o "lowerdir=$lowerdir,upperdir=$up,workdir=$work,redirect_dir=off,index=off,metacopy=off" "$merged"
  MOUNTS+=("$merged")
  mount -t proc proc "$merged/proc"; MOUNTS+=("$merged/proc")
  mount --bind /dev "$merged/dev"; MOUNTS+=("$merged/dev")
  cp -L /etc/resolv.conf "$merged/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$merged/usr/sbin/policy-rc.d"; chmod 755 "$merged/usr/sbin/policy-rc.d"
  local env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8)
  chroot "$merged" "${env[@]}" apt-get update -qq
  chroot "$merged" "${env[@]}" apt-get install -y -qq --no-install-recommends "$@" \
    >"$BUILD/$name.apt.log" 2>&1 || { tail -30 "$BUILD/$name.apt.log" >&2; exit 1; }
  chroot "$merged" "${env[@]}" apt-get clean
  rm -rf "$merged"/var/lib/apt/lists/* "$merged/etc/resolv.conf" "$merged/usr/sbin/policy-rc.d"
  cleanup_mounts
  rm -rf "$work"
  $OCI layer --src "$up" --overlay --out "$LAYERS/$name" --compress "$compress" \
    --created-by "apt-get install --no-install-recommends $*"
  stamp_layer "$name"
}

# pip_layer NAME COMPRESS APP_FILE PACKAGES... (pinned, --no-deps: the list is complete)
pip_layer() {
  local name=$1 compress=$2 app=$3; shift 3
  have_layer "$name" && return
  log "layer $name: pip install $*"
  local dir=$BUILD/$name.dir
  rm -rf "$dir"; mkdir -p "$dir/$SITE" "$dir/app"
  python3 -m pip install --quiet --disable-pip-version-check --no-compile --no-deps \
    --cache-dir "$CACHE/pip" --target "$dir/$SITE" \
    --only-binary=:all: --platform manylinux2014_x86_64 --python-version "$PYVER" --implementation cp \
    "$@"
  rm -rf "${dir:?}/$SITE/bin"
  # Byte-compile like `pip install` does, but with hash-based .pyc files so
  # that the layer does not depend on when or where it was built (-d: the
  # file names in the .pyc files are the paths inside the image).
  if python3 -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$PYVER'.split('.'))))"; then
    python3 -m compileall -q -j 0 --invalidation-mode checked-hash -d "/$SITE" "$dir/$SITE" >/dev/null
  fi
  if [ -n "$app" ]; then cp "$app" "$dir/app/app.py"; else rmdir "$dir/app"; fi
  chmod -R u+rwX,go+rX,go-w "$dir"
  $OCI layer --src "$dir" --out "$LAYERS/$name" --compress "$compress" --owner 0:0 \
    --clamp-mtime "$EPOCH" --created-by "pip install --target /$SITE $*"
  stamp_layer "$name"
}

APPS=$REPO/scripts/corpus-apps

layer_python() { layer_debian; apt_layer python gzip "debian.rootfs" python3; }
layer_app_a() {
  pip_layer app-a gzip "$APPS/app-a.py" \
    requests==2.32.3 urllib3==2.2.3 idna==3.10 certifi==2024.8.30 charset-normalizer==3.4.0
}
layer_app_b() {
  pip_layer app-b none "$APPS/app-b.py" \
    flask==3.0.3 werkzeug==3.0.6 jinja2==3.1.4 markupsafe==3.0.2 itsdangerous==2.2.0 click==8.1.7 blinker==1.8.2
}
layer_app_c() {
  pip_layer app-c gzip "$APPS/app-c.py" \
    flask==3.0.3 werkzeug==3.0.6 jinja2==3.1.4 markupsafe==3.0.2 itsdangerous==2.2.0 click==8.1.7 blinker==1.8.2 \
    boto3==1.35.36 botocore==1.35.36 s3transfer==0.10.3 jmespath==1.0.1 python-dateutil==2.9.0.post0 six==1.16.0 \
    urllib3==2.2.3
}
layer_fn() {
  pip_layer fn gzip "$APPS/fn.py" \
    awslambdaric==4.2.2 simplejson==3.20.1 snapshot-restore-py==1.0.0
}
layer_toolchain() {
  layer_python
  apt_layer toolchain zstd "debian.rootfs python.upper" \
    build-essential gfortran clang llvm-dev python3-dev libpython3-dev git
}
layer_sci() {
  pip_layer sci gzip "$APPS/big.py" \
    numpy==1.26.4 scipy==1.13.1 pandas==2.2.3 python-dateutil==2.9.0.post0 pytz==2024.2 tzdata==2024.2 \
    six==1.16.0 scikit-learn==1.5.2 joblib==1.4.2 threadpoolctl==3.5.0
}

# ---------------------------------------------------------------- images

have_image() { [ -f "$STAMPS/image-$1" ]; }

# make_image NAME "CMD" LAYER...
make_image() {
  local name=$1 cmd=$2; shift 2
  have_image "$name" && { log "image $name: exists"; return; }
  local jsons=() l
  for l in "$@"; do jsons+=("$LAYERS/$l.json"); done
  $OCI image --out "$CORPUS/$name" --name "lode-corpus/$name" --cmd "$cmd" ${WORKDIR:+--workdir "$WORKDIR"} "${jsons[@]}"
  skopeo inspect "oci:$CORPUS/$name:latest" >"$BUILD/$name.inspect.json"
  echo "$*" >"$STAMPS/image-$name"
}

image_debian() { layer_debian; make_image debian "/bin/bash" debian; }
image_python() { layer_python; make_image python "python3" debian python; }
image_app_a() { layer_python; layer_app_a; make_image app-a "python3 /app/app.py" debian python app-a; }
image_app_b() { layer_python; layer_app_b; make_image app-b "python3 /app/app.py" debian python app-b; }
image_app_c() { layer_python; layer_app_c; make_image app-c "python3 /app/app.py" debian python app-c; }
image_fn() {
  layer_python; layer_app_a; layer_fn
  WORKDIR=/app make_image fn "python3 -m awslambdaric app.handler" debian python app-a fn
}
image_big() { layer_toolchain; layer_sci; make_image big "python3 /app/app.py" debian python toolchain sci; }
image_docker() {
  image_app_a
  have_image docker && { log "image app-a.docker.tar: exists"; return; }
  log "docker-archive of app-a"
  rm -f "$CORPUS/app-a.docker.tar"
  skopeo copy --quiet "oci:$CORPUS/app-a:latest" "docker-archive:$CORPUS/app-a.docker.tar:lode-corpus/app-a:latest"
  echo "app-a" >"$STAMPS/image-docker"
}

# ---------------------------------------------------------------- verify

# verify_image SOURCE CHECK_CMD...: flatten with lode, fsck, mount, run CHECK in a chroot.
verify_image() {
  local src=$1; shift
  local out=$BUILD/verify.ext4 mnt=$BUILD/verify.mnt
  log "verify $src"
  "$REPO/target/release/lode" flatten "$src" -o "$out"
  e2fsck -fn "$out" >"$BUILD/verify.fsck.log" 2>&1 || { cat "$BUILD/verify.fsck.log" >&2; exit 1; }
  mkdir -p "$mnt"
  mount -o loop,ro "$out" "$mnt"; MOUNTS+=("$mnt")
  mount -t tmpfs tmpfs "$mnt/tmp"; MOUNTS+=("$mnt/tmp")   # the image is read-only; programs want a /tmp
  chroot "$mnt" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$@"
  cleanup_mounts
  rm -f "$out"
}

verify() {
  (cd "$REPO" && cargo build --release -q -p lode-cli)
  local i
  for i in "${IMAGES[@]}"; do
    case $i in
      debian) verify_image "oci:$CORPUS/debian:latest" /bin/sh -c 'cat /etc/debian_version' ;;
      python) verify_image "oci:$CORPUS/python:latest" /usr/bin/python3 -c 'print(1)' ;;
      app-a|app-b|app-c|big) verify_image "oci:$CORPUS/$i:latest" /usr/bin/python3 -B /app/app.py ;;
      docker) verify_image "docker-archive:$CORPUS/app-a.docker.tar" /usr/bin/python3 -B /app/app.py ;;
      fn) verify_image "oci:$CORPUS/fn:latest" /bin/sh -c 'cd /app && /usr/bin/python3 -B -c "import awslambdaric, app"' ;;
    esac
  done
}

# ---------------------------------------------------------------- main

ensure_tools
for i in "${IMAGES[@]}"; do
  "image_${i//-/_}"
done
[ "$VERIFY" -eq 0 ] || verify
log "corpus in $CORPUS"
du -shl --apparent-size "$CORPUS"/{debian,python,app-a,app-b,app-c,big} "$CORPUS/app-a.docker.tar" 2>/dev/null || true
