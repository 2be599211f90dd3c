#!/usr/bin/env bash
# Stop the test SLURM cluster that start_test_slurm.sh started: only the PIDs it recorded,
# waiting (up to 15 s) until they are gone.
set -uo pipefail
STATE="${1:-/tmp/implicit-sparsity-test-slurm}"
[ -f "$STATE/pids" ] || exit 0
pids="$(cat "$STATE/pids")"
for pid in $pids; do
    kill "$pid" 2>/dev/null || true
done
for _ in $(seq 1 30); do
    alive=0
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
done
: > "$STATE/pids"
