#!/usr/bin/env bash
# One command for every benchmark (docs/BENCHMARKS.md, "One command"): builds the release
# binary and the benches, installs the peers (benches/peers/setup.sh, only what is
# missing), runs the benches in rounds and prints one summary table computed from their
# machine-readable output: ratios first (drover against each peer and against each goal),
# absolute figures as context, and the machine.
#
#   bash benches/run.sh             # full sizes, 5 rounds
#   bash benches/run.sh --smoke     # tiny sizes, one round, about a minute
#   bash benches/run.sh --smoke --debug --no-install   # what CI runs (.ci/run)
#
# Options: --rounds N (default 5; 1 with --smoke), --out DIR (default
# target/bench-results), --no-install (use what is installed), --only LIST (e.g.
# "engine,rto": only these benches; the summary covers those), --debug (the dev profile's
# binary and benches, no release build: checks that every bench, peer and check runs, in
# the time CI has; its figures are not to be quoted, even less than a smoke run's).
#
# Rounds: plan, engine and rto are run once per round (one sample of every case each,
# their order rotating), so a burst of load from elsewhere falls on all of them alike;
# inside each bench the tools it compares also alternate case by case. s3, store and
# daemon set up servers and data (2 GiB uploaded, a PostgreSQL server, a 13 s drill),
# so they run once, after the rounds, with as many rounds of their own inside.
#
# Output in DIR: results.jsonl (every sample, one JSON object a line, see
# benches/common.rs), logs/ (each bench's own tables and messages), summary.md (the
# table printed at the end). Exits non-zero when a bench fails or a result the table
# needs is missing; a peer that cannot be installed is not a failure (its rows say
# "not installed" and why). Missed goals are findings, not failures.
#
# ha (the takeover after a kill -9 of the leader, two daemons on a PostgreSQL server) runs
# last: 10 trials with a 5 s lease (2 minutes), one trial with a 2 s lease in a smoke run.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

smoke=""
rounds=""
out="$root/target/bench-results"
install=1
only=""
debug=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --rounds) rounds="$2"; shift ;;
        --out) out="$2"; shift ;;
        --no-install) install="" ;;
        --debug) debug=1 ;;
        --only) only=",$2,"; shift ;;
        -h | --help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
rounds="${rounds:-$([[ -n "$smoke" ]] && echo 1 || echo 5)}"
nice=(nice -n "${BENCH_NICE:-10}")
profile=()
if [[ -n "$debug" ]]; then
    profile=(--profile dev)
    export DROVER_BIN="$root/target/debug/drover"
fi

mkdir -p "$out/logs"
# Absolute: cargo runs each bench from its package's directory (benches/), where a
# relative --json path would name another file.
out="$(cd "$out" && pwd)"
results="$out/results.jsonl"
: >"$results"
rm -f "$out/logs/"*.log

# A JSON string (the few characters that need it escaped).
json_str() {
    local s="${1//\\/\\\\}"
    s="${s//\"/\\\"}"
    s="${s//$'\n'/ }"
    printf '"%s"' "$s"
}
note() { echo "{\"bench\":\"run\",\"case\":$(json_str "$1"),\"text\":$(json_str "$2")}" >>"$results"; }
log() { echo "run.sh: $*" >&2; }

wanted() { [[ -z "$only" || "$only" == *",$1,"* ]]; }

failures=0
step() {
    # step NAME LOG COMMAND...: runs a build or install step, fails the run if it fails.
    local name="$1" logfile="$2"
    shift 2
    log "$name"
    if ! "$@" >"$logfile" 2>&1; then
        log "$name FAILED (see $logfile):"
        tail -n 20 "$logfile" >&2
        note failed "$name"
        failures=$((failures + 1))
        return 1
    fi
}

# CPU time of other processes while a bench ran: busy jiffies of the whole machine
# minus the CPU time of this script's children, as a share of the cores' time.
clk_tck="$(getconf CLK_TCK 2>/dev/null || echo 100)"
cores="$(nproc 2>/dev/null || echo 1)"
busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
# `times` must run in this shell (in a $(...) subshell it would count that subshell's
# children): its output goes to a file, read back by children_cpu.
times_file="$out/.times"
children_cpu() { tail -n 1 "$times_file" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } printf "%.3f", t }'; }

bench() {
    # bench NAME TAG ARGS...: one run of one bench, its samples appended to results.jsonl.
    local name="$1" tag="$2"
    shift 2
    local logfile="$out/logs/$name-$tag.log"
    read -r load1 _ </proc/loadavg
    echo "{\"bench\":\"run\",\"tool\":\"machine\",\"case\":\"$name\",\"metric\":\"loadavg1\",\"unit\":\"\",\"value\":$load1}" >>"$results"
    local t0 b0 c0 t1 b1 c1
    t0="$(date +%s.%N)"
    b0="$(busy_jiffies)"
    times >"$times_file"
    c0="$(children_cpu)"
    log "$name ($tag)"
    "${nice[@]}" cargo bench --quiet "${profile[@]}" -p drover-benches --bench "$name" -- --json "$results" "$@" >"$logfile" 2>&1
    local rc=$?
    t1="$(date +%s.%N)"
    b1="$(busy_jiffies)"
    times >"$times_file"
    c1="$(children_cpu)"
    awk -v t0="$t0" -v t1="$t1" -v b0="$b0" -v b1="$b1" -v c0="$c0" -v c1="$c1" -v hz="$clk_tck" -v n="$cores" -v name="$name" '
        BEGIN {
            wall = t1 - t0; if (wall <= 0) wall = 0.001
            others = (b1 - b0) / hz - (c1 - c0); if (others < 0) others = 0
            printf "{\"bench\":\"run\",\"tool\":\"machine\",\"case\":\"%s\",\"metric\":\"others_cpu_share\",\"unit\":\"%%\",\"value\":%.1f}\n", name, 100 * others / (wall * n)
        }' >>"$results"
    if [[ $rc -ne 0 ]]; then
        log "$name ($tag) FAILED with exit $rc (see $logfile):"
        tail -n 20 "$logfile" >&2
        note failed "$name $tag (exit $rc)"
        failures=$((failures + 1))
    fi
}

# 1. Build (narrowly) and install the peers.
if [[ -n "$debug" ]]; then
    step "building the debug binary" "$out/logs/build-drover.log" "${nice[@]}" cargo build -p drover || true
else
    step "building the release binary" "$out/logs/build-drover.log" "${nice[@]}" cargo build --release -p drover || true
fi
step "building the benches" "$out/logs/build-benches.log" "${nice[@]}" cargo bench "${profile[@]}" -p drover-benches --no-run || true
if [[ -n "$install" ]]; then
    step "installing the peers" "$out/logs/peers.log" bash benches/peers/setup.sh || true
    sed 's/^/  /' "$out/logs/peers.log" >&2
fi

# 2. What the run is: commit, toolchain, peers' versions.
note started "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
note rounds "$rounds$([[ -n "$smoke" ]] && echo " (smoke)")"
note commit "$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo " (with uncommitted changes)")"
note rustc "$(rustc -V 2>/dev/null)"
version() { "$@" 2>/dev/null | head -n 1; }
peers="Chaos Toolkit $(version target/bench-peers/venv/bin/chaos --version | sed 's/.*version //')"
peers+=", $(version python3 --version)"
peers+=", boto3 $(version python3 -c 'import boto3; print(boto3.__version__)')"
peers+=", moto $(version python3 -c 'import moto; print(moto.__version__)')"
peers+=", $(version rclone --version)"
peers+=", s3s-fs $(version s3s-fs --version | awk '{print $NF}')"
peers+=", PostgreSQL $(version /usr/lib/postgresql/15/bin/postgres --version | awk '{print $3}')"
note peers "$peers"

# 3. Sizes.
if [[ -n "$smoke" ]]; then
    plan_args=(--cis 2000 --steps 200 --shapes random)
    engine_args=(--small 5 --large 20 --fan 20)
    rto_args=(--scale 0.1)
    s3_args=(--objects 2 --mib 2)
    store_args=(--appends 50)
    daemon_args=(--rate 50 --seconds 2 --steps 24)
    ha_args=(--trials 1 --lease 2)
else
    plan_args=(--cis 100000 --steps 10000)
    engine_args=(--small 100 --large 1000 --fan 1000)
    rto_args=()
    s3_args=()
    store_args=()
    daemon_args=()
    ha_args=(--trials 10 --lease 5)
fi

# 4. The rounds.
rotating=(plan engine rto)
for ((r = 1; r <= rounds; r++)); do
    warmup=$([[ $r -eq 1 && -z "$smoke" ]] && echo 1 || echo 0)
    for ((k = 0; k < ${#rotating[@]}; k++)); do
        name="${rotating[$(((k + r - 1) % ${#rotating[@]}))]}"
        wanted "$name" || continue
        case "$name" in
            plan) bench plan "round$r" "${plan_args[@]}" --iterations 1 --warmup "$warmup" ;;
            engine) bench engine "round$r" "${engine_args[@]}" --iterations 1 --warmup "$warmup" ;;
            rto) bench rto "round$r" "${rto_args[@]}" --iterations 1 --warmup "$warmup" ;;
        esac
    done
done
wanted s3 && bench s3 all "${s3_args[@]}" --rounds "$rounds"
wanted store && bench store all "${store_args[@]}" --iterations "$rounds"
wanted daemon && bench daemon all "${daemon_args[@]}"
wanted ha && bench ha all "${ha_args[@]}"
note finished "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
for name in plan engine rto s3 store daemon ha; do
    wanted "$name" && note ran "$name"
done

# 5. The table.
summary_args=(--input "$results" --figures)
[[ -n "$smoke" ]] && summary_args+=(--smoke)
"${nice[@]}" cargo bench --quiet "${profile[@]}" -p drover-benches --bench summary -- "${summary_args[@]}" | tee "$out/summary.md"
summary_rc=${PIPESTATUS[0]}
log "results: $results; logs: $out/logs; table: $out/summary.md"
if [[ $failures -gt 0 || $summary_rc -ne 0 ]]; then
    log "FAILED: $failures step(s) failed; summary exit $summary_rc"
    exit 1
fi
