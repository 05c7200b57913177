#!/usr/bin/env bash
# Installs everything MCL-Caffe needs on a Debian 12 machine, in five steps:
#   apt    Debian build dependencies;
#   venv   the Python environment .venv with the pinned requirements;
#   caffe  BVLC Caffe 1.0 (Debian 11 source package + patches/), CPU-only, with
#          pycaffe, the Python layer and the `caffe` tool, cached outside the
#          checkout under a key of everything that changes the binary;
#   link   links Caffe into .venv (`import caffe`, `.venv/bin/caffe`);
#   check  checks that it imports and has the layers the nets need.
#
# Use your own Caffe instead (a GPU build, a distro package):
#   MCL_CAFFE_ROOT=/path/to/caffe make setup
# where the folder holds python/caffe (pycaffe, built) and the `caffe` tool
# under build/tools/, build/install/bin/, bin/ or tools/.
#
# Environment:
#   MCL_CACHE        the build cache (default ~/.cache/mcl-caffe, or $XDG_CACHE_HOME/mcl-caffe)
#   MCL_CAFFE_ROOT   your own Caffe (above): the caffe step is skipped
#   MCL_SETUP_STEPS  the steps to run, in the order above (default: all five), e.g.
#                    MCL_SETUP_STEPS=caffe builds Caffe into the cache and nothing else
#                    (the venv must exist); .venv/.mcl-setup.stamp is written only by all five
#   JOBS             compile jobs (default: nproc)
#
# Setups running at once: one builds a given key, in a folder of its own beside the key
# (caffe-<key>.build-<pid>); the key's name, caffe-<key>, is a link to it made only once the
# build is complete, so a killed build never leaves a half-built folder under the key. The
# builder holds an flock on caffe-<key>.lock (its pid written in it); another setup waits for
# it, says so, and uses its build. The kernel drops the lock of a process that dies, so a killed
# setup leaves no stale lock; its partial folder is removed by the next builder. Setups in one
# checkout also take turns over .venv (an flock on .venv/.setup.lock).
# The build cannot simply be renamed into place when done: CMake writes its absolute path into
# the libraries' RUNPATH and pycaffe's _caffe.so link, so the folder keeps the path it was built at.
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

ALL_STEPS="apt venv caffe link check"
STEPS="${MCL_SETUP_STEPS:-$ALL_STEPS}"

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

# take_lock FILE WHAT: an flock on FILE, held by this script (and the commands it starts) until
# release_lock or its end; while another setup holds it, says so (WHAT: who holds it) and waits. The holder's pid is written into the file to be named. The file is never removed:
# removing a lock file lets a third process lock a new file while the second holds the old one.
LOCK_FD=
HELD=()  # lock files held: their pid is cleared as this script ends, however it ends
trap 'for f in "${HELD[@]}"; do : > "$f"; done' EXIT
take_lock() {
  local file="$1" what="$2" fd pid=
  exec {fd}>>"$file" || fail lock "cannot open $file"
  if ! flock -n "$fd"; then
    # The holder writes its pid just after it has the lock: wait a moment for it.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      pid="$(cat "$file" 2>/dev/null || true)"
      [ -n "$pid" ] && break
      sleep 0.2
    done
    say "waiting for $what, pid ${pid:-unknown}"
    flock "$fd" || fail lock "flock $file"
  fi
  echo "$$" > "$file"
  HELD+=("$file")
  LOCK_FD=$fd
}

# release_lock FILE FD: the pid cleared (a waiter must not name this setup after it), then the lock.
release_lock() {
  local fd="$2" f keep=()
  : > "$1"
  for f in "${HELD[@]}"; do [ "$f" = "$1" ] || keep+=("$f"); done
  HELD=("${keep[@]}")
  exec {fd}>&-
}

# write_file FILE TEXT: a .pth file that Python starting meanwhile reads whole or not at all.
write_file() {
  printf '%s\n' "$2" > "$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"
}

CHECKOUT_LOCK_FD=
lock_checkout() {
  [ -n "$CHECKOUT_LOCK_FD" ] && return
  mkdir -p "$VENV"
  take_lock "$VENV/.setup.lock" "another setup of this checkout"
  CHECKOUT_LOCK_FD=$LOCK_FD
}

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
  # Another setup (or apt) may hold dpkg's lock: waited for, not failed on.
  as_root apt-get -o DPkg::Lock::Timeout=600 update -qq || fail apt "apt-get update"
  DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || fail apt "apt-get install ${missing[*]}"
}

step_venv() {
  lock_checkout
  local want; want="$(sha256sum requirements.txt | cut -c1-16)"
  # pip is the last thing venv installs: a venv without it was cut short (a killed setup), and
  # venv completes it in place.
  if [ ! -x "$VENV/bin/python" ] || [ ! -x "$VENV/bin/pip" ]; then
    say "venv: creating $VENV"
    python3 -m venv "$VENV" || fail venv "python3 -m venv"
  fi
  if [ "$(cat "$VENV/.requirements.sha" 2>/dev/null)" != "$want" ]; then
    say "venv: installing requirements.txt"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt \
      || fail venv "pip install -r requirements.txt"
    # requirements.txt's `#no-deps NAME==VERSION` lines: without their declared dependencies.
    local nodeps; nodeps="$(sed -n 's/^#no-deps //p' requirements.txt)"
    if [ -n "$nodeps" ]; then
      # shellcheck disable=SC2086
      "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps $nodeps \
        || fail venv "pip install --no-deps $nodeps"
    fi
    echo "$want" > "$VENV/.requirements.sha"
  else
    say "venv: requirements up to date"
  fi
  # The project package itself, installed editable (pyproject.toml): `import mcl` finds this
  # checkout from any folder, and no entry file touches sys.path. Checked from / (not the checkout,
  # whose folder Python would search first).
  local site; site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  rm -f "$site/mcl-project.pth"
  if ! (cd / && "$VENV/bin/python" -c 'import sys, pathlib, mcl
sys.exit(pathlib.Path(mcl.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]).resolve())' "$ROOT") 2>/dev/null; then
    say "venv: installing the project (pip install -e .)"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT" \
      || fail venv "pip install -e ."
  fi
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

caffe_dir() { echo "$CACHE/caffe-$(caffe_key)"; }

step_caffe() {
  if [ -n "${MCL_CAFFE_ROOT:-}" ]; then
    say "caffe: using your own Caffe at $MCL_CAFFE_ROOT (MCL_CAFFE_ROOT), skipping the build"
    return
  fi
  local dir; dir="$(caffe_dir)"
  if [ -f "$dir/.complete" ]; then
    say "caffe: cached build $dir"
    return
  fi
  mkdir -p "$CACHE" || fail "caffe cache" "cannot make $CACHE"
  take_lock "$dir.lock" "the Caffe build of another setup"
  local fd=$LOCK_FD
  if [ -f "$dir/.complete" ]; then
    say "caffe: built by the setup waited for: $dir"
  else
    # Under the lock no other setup builds this key: a build folder left here is a killed one's,
    # and a folder under the key itself without .complete one of a version that built in place.
    rm -rf "$dir" "$dir".build-*
    local build="$dir.build-$$"
    mkdir "$build"
    step_fetch_source "$build"
    step_build "$build"
    touch "$build/.complete"
    sync -f "$build" 2>/dev/null || sync  # on disk before the key names it, as a power cut may come
    ln -s "$(basename "$build")" "$build.link"
    mv -T "$build.link" "$dir"  # the key's name appears at once, on a complete build
    say "caffe: built into $dir"
  fi
  release_lock "$dir.lock" "$fd"
}

step_link() {
  lock_checkout
  local root
  if [ -n "${MCL_CAFFE_ROOT:-}" ]; then
    root="$(cd "$MCL_CAFFE_ROOT" && pwd)" || fail "own caffe" "MCL_CAFFE_ROOT=$MCL_CAFFE_ROOT is not a folder"
  else
    local dir; dir="$(caffe_dir)"
    [ -f "$dir/.complete" ] || fail "link caffe" "no complete Caffe build at $dir (the caffe step makes it)"
    root="$dir/src"
  fi
  [ -d "$root/python/caffe" ] || fail "link caffe" "$root/python/caffe not found"
  local tool; tool="$(find_caffe_tool "$root")"
  [ -n "$tool" ] || fail "link caffe" "no caffe tool under $root"
  local site; site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  write_file "$site/mcl-caffe.pth" "$root/python"
  ln -sfn "$tool" "$VENV/bin/caffe"
}

step_check() {
  GLOG_minloglevel=2 "$VENV/bin/python" -m mcl.caffe.check || fail check "Caffe does not import or lacks a layer we need"
}

for step in $STEPS; do
  case " $ALL_STEPS " in *" $step "*) ;; *) fail "$step" "no such step (MCL_SETUP_STEPS: $ALL_STEPS)";; esac
done
for step in $ALL_STEPS; do
  case " $STEPS " in *" $step "*) "step_$step";; esac
done
if [ "$(echo "$STEPS" | xargs)" = "$ALL_STEPS" ]; then
  touch "$VENV/.mcl-setup.stamp"
fi
say "done"
