#!/usr/bin/env bash
# Builds the extensions with AddressSanitizer + UndefinedBehaviorSanitizer in a
# copy of the tree (so the normal in-place build stays untouched) and runs the
# whole test suite against that build. Any sanitizer report, in the test
# process or in any child it starts, fails the run: reports are written to
# files (log_path) and the run fails when one exists, even if the process
# that wrote it exited 0.
#
#   tools/sanitize.sh [pytest args...]      (PYTHON=... picks the interpreter)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
dest=${PERCPU_SANITIZE_DIR:-$root/build/asan}
logs=$dest/sanitizer-logs

asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
# gcc prints the bare name back when it does not have the library.
for lib in "$asan" "$ubsan"; do
    if [[ "$lib" != /* ]]; then
        echo "sanitize: gcc has no $lib (install libasan/libubsan for this gcc)" >&2
        exit 2
    fi
done

mkdir -p "$dest"
# Generated C files travel with their sources (their mtimes too), so Cython
# only regenerates what changed; compiled modules never travel.
tar -C "$root" --exclude=./build --exclude=./.git --exclude=./.tox --exclude=./.venv \
    --exclude='*.so' --exclude=__pycache__ --exclude=.hypothesis -cf - . | tar -C "$dest" -xf -
rm -rf "$logs"
mkdir -p "$logs"

cd "$dest"
start=$(date +%s)
# --force: build_ext does not see percpu.h as a dependency of the modules.
PERCPU_SANITIZE=address,undefined "$py" setup.py -q build_ext --inplace --force >/dev/null
built=$(date +%s)

# detect_leaks=0: the interpreter itself keeps memory until exit by design;
# leaks of our objects are measured by tests/test_leaks.py instead.
# PYTHONMALLOC=malloc sends Python's small objects through malloc too, so
# ASan sees every buffer (ours included) with its own redzones.
# The benchmark harness passes LD_PRELOAD and the sanitizer options on to
# pyperf's workers, so tests/test_bench.py runs sanitized too.
set +e
env LD_PRELOAD="$asan $ubsan" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:log_path=$logs/asan:strict_string_checks=1" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan" \
    PYTHONMALLOC=malloc PYTHONPATH="$dest/src" PERCPU_SANITIZED=address,undefined \
    "$py" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
end=$(date +%s)

reports=$(find "$logs" -type f | wc -l)
if [[ $reports -gt 0 ]]; then
    echo "sanitize: $reports sanitizer report(s):" >&2
    for f in "$logs"/*; do
        echo "---- $f" >&2
        cat "$f" >&2
    done
    [[ $rc -eq 0 ]] && rc=1
fi
echo "sanitize: build $((built - start)) s, tests $((end - built)) s, pytest exit $rc, reports $reports" >&2
exit $rc
