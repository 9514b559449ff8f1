#!/usr/bin/env bash
# agentrt's sequential run against the Python peers, in one command (see README.md):
#   benches/peers/run.sh [--runs N]
# Prints BENCH lines for each peer, agentrt's loop.runs_per_s_sequential on the same run shape
# measured in the same invocation, and loop.vs_best_peer = agentrt ÷ the fastest peer.
set -euo pipefail
runs=500
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        *) echo "usage: $0 [--runs N]" >&2; exit 2 ;;
    esac
done
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# A throwaway venv unless AGENTRT_PEERS_VENV names one to reuse.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
venv="${AGENTRT_PEERS_VENV:-$tmp/venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r "$here/requirements.txt"
out="$tmp/bench.out"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
"$venv/bin/python" "$here/peers.py" --runs "$runs" | tee -a "$out"
(cd "$root" && cargo bench -q -p agentrt-core-loop --bench suite_loop -- --sequential-only --runs "$runs") \
    | tee -a "$out"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
awk '
    $1 == "BENCH" && $2 ~ /^peers\..*_runs_per_s$/ { if ($3 > best) { best = $3; who = $2 } }
    $1 == "BENCH" && $2 == "loop.runs_per_s_sequential" { ours = $3 }
    END {
        if (ours == "" || best == "") { print "# loop.vs_best_peer: a figure is missing" > "/dev/stderr"; exit 1 }
        printf "# best peer: %s\n", who
        printf "BENCH loop.vs_best_peer %.2f ratio\n", ours / best
    }' "$out"
