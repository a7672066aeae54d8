#!/usr/bin/env bash
# Runs the whole suite as two pytest processes at once (`make test`): the tests that use the
# Docker engine (marked `docker`), one after another, since they share the engine (one restarts
# it; each removes every object of the test label afterwards), and all the others. Most Docker
# tests wait on the engine, so the two share the machine's cores well. Each process has its own
# temporary folder and log; each log is printed when its process ends. Fails if either failed.
# Extra arguments go to both pytest processes. (bash 5.1+: `wait -n -p`.)
set -uo pipefail

pytest="${PYTEST:-.venv/bin/pytest}"
work="$(mktemp -d "${TMPDIR:-/tmp}/storefleet-tests.XXXXXX")"
trap 'rm -rf "$work"' EXIT

declare -A names
"$pytest" -m docker --basetemp "$work/docker-tmp" -p no:cacheprovider "$@" \
    >"$work/docker.log" 2>&1 &
names[$!]=docker
"$pytest" -m "not docker" --basetemp "$work/other-tmp" "$@" >"$work/other.log" 2>&1 &
names[$!]=other

status=0
for _ in 1 2; do
    wait -n -p ended
    code=$?
    name="${names[$ended]}"
    # exit 5: the selection held no test (arguments that name one kind only)
    if ((code != 0 && code != 5)); then
        status=1
    fi
    echo "===== the ${name} tests (exit ${code}) ====="
    cat "$work/$name.log"
done
exit "$status"
