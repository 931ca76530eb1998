#!/usr/bin/env bash
# Runs drover's cargo-fuzz targets (nightly toolchain, `cargo install cargo-fuzz --locked`).
#
#   bash fuzz/run.sh                  the full run: 1,000,000 executions per target
#   bash fuzz/run.sh --ci             a bounded run: 2,000 executions per target
#   bash fuzz/run.sh --runs N [--max-time S] [TARGET...]   (S: seconds per target)
#   bash fuzz/run.sh --merge          after a run: fuzz/corpus/TARGET becomes the seeds and
#                                     the inputs that add the most coverage, 50 at most
#
# New inputs go to fuzz/target/work/TARGET, never into the committed corpus; a crash is
# saved under fuzz/artifacts/TARGET/ and fails the script. docs/RELIABILITY.md has the
# figures of the last full run and what each target checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

runs=1000000
max_time=0
merge=false
max_files=50
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --ci) runs=2000 ;;
        --runs) runs="$2"; shift ;;
        --max-time) max_time="$2"; shift ;;
        --merge) merge=true ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=(config cmdb runbook evidence)

# Built without a sanitizer: the code under test is safe Rust (unsafe_code = forbid), so
# what the fuzzer looks for is panics; ASan would check only the dependencies' unsafe
# code, at about half the speed. Debug assertions and overflow checks are on.
flags=(-s none --codegen-units 16)
cargo +nightly fuzz build "${flags[@]}"
bin=target/x86_64-unknown-linux-gnu/release

for t in "${targets[@]}"; do
    mkdir -p "target/work/$t" "artifacts/$t"
    if $merge; then
        # The coverage of every input (the corpus and the new inputs), then a small set:
        # the seeds, and greedily the inputs that add the most edges (minimize.py).
        rm -rf "target/merged/$t" "target/picked/$t" && mkdir -p "target/merged/$t"
        "$bin/$t" -merge=1 -merge_control_file="target/work/$t.merge" \
            "target/merged/$t" "corpus/$t" "target/work/$t" > "target/work/$t.merge.log" 2>&1
        python3 minimize.py "target/work/$t.merge" "target/picked/$t" "$max_files"
        find "corpus/$t" -maxdepth 1 -type f -delete
        cp "target/picked/$t"/* "corpus/$t/"
        continue
    fi
    start=$(date +%s)
    status=0
    "$bin/$t" "target/work/$t" "corpus/$t" \
        -runs="$runs" -max_total_time="$max_time" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" > "target/work/$t.log" 2>&1 || status=$?
    grep -E '(INITED|DONE)|^Done|^stat::number_of_executed_units|panicked|^==|^SUMMARY' "target/work/$t.log" || true
    echo "$t: $(( $(date +%s) - start )) s wall, exit $status"
    [ "$status" -eq 0 ] || { echo "$t: crash, see fuzz/artifacts/$t/ and fuzz/target/work/$t.log" >&2; exit 1; }
done
