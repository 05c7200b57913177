#!/usr/bin/env bash
# Installs everything MCL-Caffe needs on a Debian 12 machine:
#   1. Debian build dependencies (apt);
#   2. the Python environment .venv with the pinned requirements;
#   3. BVLC Caffe 1.0 (Debian 11 source package + patches/), CPU-only, with
#      pycaffe, the Python layer and the `caffe` tool, cached outside the
#      checkout under a key of everything that changes the binary;
#   4. links Caffe into .venv (`import caffe`, `.venv/bin/caffe`) and checks it.
#
# Use your own Caffe instead (a GPU build, a distro package):
#   MCL_CAFFE_ROOT=/path/to/caffe make setup
# where the folder holds python/caffe (pycaffe, built) and the `caffe` tool
# under build/tools/, build/install/bin/, bin/ or tools/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
CACHE="${MCL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mcl-caffe}"
CAFFE_DEB_VERSION="1.0.0+git20180821.99bd997-8"
CAFFE_SUITE="bullseye"
JOBS="${JOBS:-$(nproc)}"
APT_PACKAGES=(build-essential cmake dpkg-dev patch graphviz
  libboost-system-dev libboost-thread-dev libboost-filesystem-dev
  libboost-python-dev libprotobuf-dev protobuf-compiler libgoogle-glog-dev
  libgflags-dev libhdf5-dev liblmdb-dev libopenblas-dev)
CMAKE_FLAGS=(-DCPU_ONLY=ON -DUSE_OPENCV=OFF -DUSE_LEVELDB=OFF -DUSE_LMDB=ON
  -DBLAS=Open -Dpython_version=3.11 -DBUILD_python_layer=ON -DBUILD_docs=OFF
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS=-std=gnu++14)

T0=$(date +%s)
say() { printf '[setup %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() {
  local step="$1"; shift
  {
    echo
    echo "setup: step '$step' failed${1:+: $*}."
    echo "  To use a Caffe you already have (a GPU build, a distro package), point"
    echo "  MCL_CAFFE_ROOT at its folder (holding python/caffe and the caffe tool)"
    echo "  and run 'make setup' again; the build is then skipped."
  } >&2
  exit 1
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  # A user bringing their own Caffe only needs graphviz from this list.
  if [ -n "${MCL_CAFFE_ROOT:-}" ]; then
    local keep=(); for p in "${missing[@]}"; do [ "$p" = graphviz ] && keep+=("$p"); done
    missing=("${keep[@]}")
  fi
  if [ ${#missing[@]} -eq 0 ]; then say "apt: all packages present"; return; fi
  say "apt: installing ${missing[*]}"
  as_root apt-get update -qq || fail apt "apt-get update"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || fail apt "apt-get install ${missing[*]}"
}

step_venv() {
  local want; want="$(sha256sum requirements.txt | cut -c1-16)"
  if [ ! -x "$VENV/bin/python" ]; then
    say "venv: creating $VENV"
    python3 -m venv "$VENV" || fail venv "python3 -m venv"
  fi
  if [ "$(cat "$VENV/.requirements.sha" 2>/dev/null)" != "$want" ]; then
    say "venv: installing requirements.txt"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt \
      || fail venv "pip install -r requirements.txt"
    echo "$want" > "$VENV/.requirements.sha"
  else
    say "venv: requirements up to date"
  fi
  # The project package itself, importable from the checkout.
  echo "$ROOT" > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mcl-project.pth"
}

caffe_key() {
  # Everything that changes the binary: source version, patches, flags,
  # the NumPy pycaffe compiles against, the Python and compiler versions.
  {
    echo "$CAFFE_DEB_VERSION"
    cat patches/*.patch
    echo "${CMAKE_FLAGS[*]}"
    "$VENV/bin/python" -c 'import numpy, sys; print(numpy.__version__, sys.version)'
    gcc --version | head -1
    dpkg-query -W -f='${Version}\n' libprotobuf-dev libboost-python-dev
  } | sha256sum | cut -c1-16
}

step_fetch_source() {
  local dir="$1" tmp="$1/apt"
  mkdir -p "$tmp/lists/partial"
  local uri
  uri="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [ -n "$uri" ] || uri="http://deb.debian.org/debian"
  echo "deb-src $uri $CAFFE_SUITE main" > "$tmp/sources.list"
  local opts=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o Dir::Etc::sourceparts=/nonexistent
              -o "Dir::State::Lists=$tmp/lists" -o APT::Sandbox::User=root)
  say "caffe: fetching Debian source package caffe $CAFFE_DEB_VERSION"
  apt-get "${opts[@]}" update -qq >/dev/null || fail "source download" "apt-get update for $uri $CAFFE_SUITE"
  (cd "$tmp" && apt-get "${opts[@]}" source --download-only "caffe=$CAFFE_DEB_VERSION" >/dev/null) \
    || fail "source download" "apt-get source caffe=$CAFFE_DEB_VERSION"
  rm -rf "$dir/src"
  dpkg-source -x "$tmp"/caffe_*.dsc "$dir/src" > "$dir/unpack.log" 2>&1 || fail "source unpack" "dpkg-source -x"
  for p in patches/*.patch; do
    patch -d "$dir/src" -p1 --quiet < "$p" || fail "patch" "$p does not apply"
  done
}

step_build() {
  local dir="$1"
  mkdir -p "$dir/src/build"
  say "caffe: configuring (cmake)"
  (cd "$dir/src/build" && cmake .. "${CMAKE_FLAGS[@]}" -DPYTHON_EXECUTABLE="$VENV/bin/python" \
    > "$dir/cmake.log" 2>&1) || fail compile "cmake; see $dir/cmake.log"
  say "caffe: compiling with $JOBS jobs (about 4 minutes on 2 cores; log: $dir/build.log)"
  (cd "$dir/src/build" && make -j"$JOBS" caffe pycaffe caffe.bin > "$dir/build.log" 2>&1) \
    || { tail -20 "$dir/build.log" >&2; fail compile "make; see $dir/build.log"; }
}

find_caffe_tool() {
  local root="$1"
  for c in build/tools/caffe build/install/bin/caffe bin/caffe tools/caffe .build_release/tools/caffe.bin; do
    [ -x "$root/$c" ] && { echo "$root/$c"; return; }
  done
  command -v caffe || true
}

step_caffe() {
  local root
  if [ -n "${MCL_CAFFE_ROOT:-}" ]; then
    root="$(cd "$MCL_CAFFE_ROOT" && pwd)" || fail "own caffe" "MCL_CAFFE_ROOT=$MCL_CAFFE_ROOT is not a folder"
    say "caffe: using your own Caffe at $root (MCL_CAFFE_ROOT), skipping the build"
  else
    local key; key="$(caffe_key)"
    local dir="$CACHE/caffe-$key"
    if [ -f "$dir/.complete" ]; then
      say "caffe: cached build $dir"
    else
      rm -rf "$dir"; mkdir -p "$dir"
      step_fetch_source "$dir"
      step_build "$dir"
      touch "$dir/.complete"
      say "caffe: built into $dir"
    fi
    root="$dir/src"
  fi
  [ -d "$root/python/caffe" ] || fail "link caffe" "$root/python/caffe not found"
  local tool; tool="$(find_caffe_tool "$root")"
  [ -n "$tool" ] || fail "link caffe" "no caffe tool under $root"
  local site; site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$root/python" > "$site/mcl-caffe.pth"
  ln -sfn "$tool" "$VENV/bin/caffe"
}

step_check() {
  GLOG_minloglevel=2 "$VENV/bin/python" -m mcl.caffe.check || fail check "Caffe does not import or lacks a layer we need"
}

step_apt
step_venv
step_caffe
step_check
touch "$VENV/.mcl-setup.stamp"
say "done"
