#!/usr/bin/env bash
# Prints the path of a free-threaded CPython (built with --disable-gil) as the
# last line of its output, finding one or building one.
#
#   tools/freethreaded-python.sh [3.13|3.14]
#
# With a version, only that one will do (tox's py313t wants a 3.13t);
# without, the newest found. Looks, in order, at: $PERCPU_FT_PYTHON (an
# interpreter you name), python3.14t and python3.13t on PATH, pyenv's
# free-threaded versions (3.1x.yt), and the cache folder. Failing all of
# them it builds CPython 3.13 from the source
# package of Debian 13 ("trixie": upstream's tarball, without Debian's
# patches) into the cache folder: about 2 minutes on 2 quiet cores. The build
# needs root for apt (a deb-src entry and the -dev packages); everything else
# is idempotent, so running it again only prints the path.
#
#   PERCPU_FT_PYTHON      an interpreter to use (checked, never built)
#   PERCPU_FT_CACHE       the cache folder (default ~/.cache/percpu/cpython-3.13t)
#   PERCPU_FT_JOBS        make -j (default: the number of CPUs)
#   PERCPU_FT_NO_BUILD    non-empty: only look, never build (exit 1 when none)
#
# Progress goes to stderr; stdout carries the path only. Works without a
# terminal or stdin (CI=true).
set -euo pipefail

WANT=${1:-}
case "$WANT" in
    ""|3.13|3.14) ;;
    *) printf 'usage: %s [3.13|3.14]\n' "$0" >&2; exit 2 ;;
esac
CACHE=${PERCPU_FT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/percpu/cpython-3.13t}
JOBS=${PERCPU_FT_JOBS:-$(nproc 2>/dev/null || echo 2)}
SERIES=3.13
SUITE=trixie
SOURCES_FILE=/etc/apt/sources.list.d/percpu-$SUITE-src.sources

say() { printf 'freethreaded-python: %s\n' "$*" >&2; }

# True when $1 runs, was built without the GIL and is the version asked for.
is_free_threaded() {
    [ -x "$1" ] && "$1" -c 'import sys, sysconfig
want = sys.argv[1]
ok = sysconfig.get_config_var("Py_GIL_DISABLED") and (
    not want or "%d.%d" % sys.version_info[:2] == want)
sys.exit(0 if ok else 1)' "$WANT" </dev/null >/dev/null 2>&1
}

found() {
    say "using $1 ($("$1" -c 'import sys; print(sys.version.split()[0])' </dev/null))"
    printf '%s\n' "$1"
    exit 0
}

if [ -n "${PERCPU_FT_PYTHON:-}" ]; then
    if is_free_threaded "$PERCPU_FT_PYTHON"; then found "$PERCPU_FT_PYTHON"; fi
    say "PERCPU_FT_PYTHON=$PERCPU_FT_PYTHON is not a free-threaded CPython${WANT:+ $WANT}"
    exit 1
fi

for name in python3.14t python3.13t; do
    if path=$(command -v "$name" 2>/dev/null) && is_free_threaded "$path"; then found "$path"; fi
done

if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    # Newest first: 3.14.xt before 3.13.xt.
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[3-9]\.[0-9]+t$' | sort -rV); do
        for path in "$root/versions/$v/bin/python${v%.*t}t" "$root/versions/$v/bin/python3"; do
            if is_free_threaded "$path"; then found "$path"; fi
        done
    done
fi

if [ -n "$WANT" ] && [ "$WANT" != "$SERIES" ]; then
    say "no free-threaded CPython $WANT found, and only $SERIES can be built here"
    exit 1
fi

PYTHON=$CACHE/bin/python${SERIES}t
# The stamp is written after `make install` succeeded: a half-installed prefix
# (an interrupted run) is rebuilt, never used.
if [ -f "$CACHE/.percpu-complete" ] && is_free_threaded "$PYTHON"; then found "$PYTHON"; fi

if [ -n "${PERCPU_FT_NO_BUILD:-}" ]; then
    say "no free-threaded CPython${WANT:+ $WANT} found (PERCPU_FT_NO_BUILD: not building one)"
    exit 1
fi

# ---- build -----------------------------------------------------------------
mkdir -p "$(dirname "$CACHE")"
# Two callers at once (two tox runs, two CI jobs on one cache) build once.
exec 9>"$CACHE.lock"
if ! flock -w 3600 9; then say "timed out waiting for $CACHE.lock"; exit 1; fi
if [ -f "$CACHE/.percpu-complete" ] && is_free_threaded "$PYTHON"; then found "$PYTHON"; fi

export DEBIAN_FRONTEND=noninteractive
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
    else return 77
    fi
}

# The headers CPython's own modules need for ssl (pip), zlib, ctypes, bz2,
# lzma, sqlite3 and readline; missing ones only lose those modules, so a
# machine without root may still build if they are there already.
DEV_PACKAGES="build-essential pkg-config libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev libsqlite3-dev libreadline-dev uuid-dev libncurses-dev xz-utils"
missing=""
for p in $DEV_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done

if [ ! -f "$SOURCES_FILE" ]; then
    say "adding deb-src for Debian $SUITE ($SOURCES_FILE)"
    printf '%s\n' \
        "# Added by percpu's tools/freethreaded-python.sh: sources only, for CPython $SERIES." \
        "Types: deb-src" \
        "URIs: http://deb.debian.org/debian" \
        "Suites: $SUITE" \
        "Components: main" \
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
        | as_root tee "$SOURCES_FILE" >/dev/null || {
            say "need root (or passwordless sudo) to add $SOURCES_FILE; or set PERCPU_FT_PYTHON"
            exit 1
        }
    updated=0
else
    updated=1
fi

if [ "$updated" = 0 ] || [ -n "$missing" ]; then
    say "apt-get update"
    as_root apt-get -qq update </dev/null >&2
fi
if [ -n "$missing" ]; then
    say "installing:$missing"
    # shellcheck disable=SC2086
    as_root apt-get -qq install -y --no-install-recommends $missing </dev/null >&2 \
        || say "could not install$missing; building without them"
fi

WORK=$CACHE.build
rm -rf "$WORK" "$CACHE"
mkdir -p "$WORK"
LOG=$WORK/build.log
cd "$WORK"
say "downloading the python$SERIES source package from Debian $SUITE"
# --download-only: the upstream tarball is all we build; Debian's patches
# move the install layout around and need dpkg-source to apply.
if ! apt-get source -qq --download-only "python$SERIES/$SUITE" </dev/null >>"$LOG" 2>&1; then
    # An index older than the entry (or than the archive) cannot know the
    # package yet: refresh once and retry.
    as_root apt-get -qq update </dev/null >&2 || true
    apt-get source -qq --download-only "python$SERIES/$SUITE" </dev/null >>"$LOG" 2>&1 || {
        tail -n 20 "$LOG" >&2; say "apt-get source python$SERIES failed"; exit 1; }
fi
orig=$(ls python"$SERIES"_*.orig.tar.* 2>/dev/null | head -n 1)
[ -n "$orig" ] || { say "no upstream tarball in $(ls)"; exit 1; }
tar xf "$orig"
src=$(find . -maxdepth 1 -type d -name 'Python-*' | head -n 1)
[ -n "$src" ] || { say "no Python-* folder in $orig"; exit 1; }
cd "$src"
say "building $(basename "$src") with --disable-gil into $CACHE (make -j$JOBS; log: $LOG)"
start=$(date +%s)
run_logged() {
    if ! "$@" </dev/null >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        say "failed: $*"
        exit 1
    fi
}
# --disable-test-modules: CPython's own test suite is neither built nor
# installed (installing it byte-compiles thousands of files three times).
run_logged ./configure --disable-gil --disable-test-modules --prefix="$CACHE" --with-ensurepip=install
run_logged make -j"$JOBS"
run_logged make install
is_free_threaded "$PYTHON" || { say "$PYTHON is not a free-threaded build"; exit 1; }
# ssl is what pip needs to reach an index; a build without it is useless here.
"$PYTHON" -c 'import ssl, zlib, ctypes' </dev/null >&2 || { say "$PYTHON lacks ssl/zlib/ctypes"; exit 1; }
touch "$CACHE/.percpu-complete"
cd /
rm -rf "$WORK"
say "built in $(( $(date +%s) - start )) s"
found "$PYTHON"
