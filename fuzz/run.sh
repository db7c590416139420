#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each:
#   fuzz/run.sh 30            # CI's smoke run
#   fuzz/run.sh 600 config    # a long run of one target
# First each target replays its kept crash inputs (fuzz/regressions/<target>,
# every one fixed), then it fuzzes from its seeds (fuzz/seeds/<target>) and
# the working corpus (fuzz/corpus/<target>, not committed). Uses nightly when
# installed, else stable with RUSTC_BOOTSTRAP=1 (libFuzzer's sanitizer flags).
# A run of a minute or less per target is a smoke, whose time is the build's:
# it builds with 16 codegen units (cargo-fuzz's default of 1 gives faster
# fuzzing but compiles each crate on one core); longer runs keep the default.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
fi
build=()
[ "$seconds" -gt 60 ] || build=(--codegen-units 16)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("${fuzz[@]}" list)
# `run` rebuilds unless it is given the flags `build` was.
"${fuzz[@]}" build "${build[@]}"
for target in "${targets[@]}"; do
    if [ -d "regressions/$target" ]; then
        echo "== $target: replaying $(ls "regressions/$target" | wc -l) kept crash input(s)"
        "${fuzz[@]}" run "${build[@]}" "$target" "regressions/$target" -- -runs=0
    fi
    mkdir -p "corpus/$target"
    dirs=("corpus/$target")
    [ -d "seeds/$target" ] && dirs+=("seeds/$target")
    echo "== $target: fuzzing for ${seconds}s"
    log=$(mktemp)
    if ! "${fuzz[@]}" run "${build[@]}" "$target" "${dirs[@]}" -- -max_total_time="$seconds" \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed: keep the input under fuzz/regressions/$target once fixed"
        exit 1
    fi
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)' "$log" || true
    rm -f "$log"
done
