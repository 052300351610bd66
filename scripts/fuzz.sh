#!/usr/bin/env bash
# Run pgtenant's fuzz targets (fuzz/, cargo-fuzz + libFuzzer), one after another.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   every target (or those named) for SECONDS
#                                           each (default 60); fails on any crash
#   scripts/fuzz.sh --smoke                 CI: build every target, then run each over
#                                           its committed seeds (plus a short burst)
#   scripts/fuzz.sh --ci                    CI (scripts/test.sh): build the targets with
#                                           plain cargo into target/ (stable toolchain,
#                                           no cargo-fuzz, no coverage instrumentation;
#                                           reuses what `cargo test` built) and run each
#                                           over its seeds, or 2000 generated inputs
#   scripts/fuzz.sh --list                  the targets
#
# Needs the nightly toolchain (`cargo +nightly`; checked, not installed: rustup would
# fetch it from outside the package registries) and cargo-fuzz (installed with
# `cargo install --locked cargo-fuzz` if missing). Builds and runs at `nice -n 15`,
# one fuzz process at a time, without a sanitizer (`-s none`: pgtenant is safe Rust;
# what is hunted is panics, overflow, timeouts and memory blow-ups; debug assertions
# and overflow checks are on, as cargo-fuzz builds by default).
#
# Where things land (under fuzz/, none of it committed):
#   fuzz/artifacts/<target>/crash-*, oom-*, timeout-*, slow-unit-*: the failing inputs;
#       reproduce one with `cargo +nightly fuzz run -s none <target> <file>`
#   fuzz/corpus/<target>/: what libFuzzer found interesting (grows across runs)
#   fuzz/logs/<target>.log: the last run's output
# Environment: FUZZ_SMOKE_SECONDS (default 1) for --smoke's burst;
#   FUZZ_MAX_LEN (default 4096) libFuzzer's -max_len.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZ=fuzz
seconds=60
smoke=0
targets=()
case "${1:-}" in
    --smoke) smoke=1; shift ;;
    --ci)
        mkdir -p "$FUZZ/artifacts" target
        t0=$SECONDS
        # The main crate's target directory (CARGO_TARGET_DIR when set), whose builds
        # `cargo test --all-targets` just made.
        tdir=${CARGO_TARGET_DIR:-target}
        nice -n 15 cargo build --manifest-path "$FUZZ/Cargo.toml" --target-dir "$tdir" --bins --features ci
        t_build=$((SECONDS - t0))
        t0=$SECONDS
        failed=()
        for t in $("$0" --list); do
            if [ -d "$FUZZ/seeds/$t" ]; then
                what=("$FUZZ/seeds/$t" -runs=0)
            else
                what=(-runs=2000 -seed=1 -len_control=0)
            fi
            if nice -n 15 "$tdir/debug/$t" "${what[@]}" -max_len=4096 -timeout=30 \
                -artifact_prefix="$FUZZ/artifacts/$t-" >"target/fuzz-$t.log" 2>&1; then
                echo "fuzz smoke: $t ok ($(grep -cE '^#' "target/fuzz-$t.log" || true) status lines)"
            else
                failed+=("$t")
                echo "fuzz smoke: $t FAILED (target/fuzz-$t.log):" >&2
                grep -aE "panicked|^  left|^ right|ERROR" "target/fuzz-$t.log" | head -6 >&2 || true
            fi
        done
        echo "fuzz smoke: build ${t_build}s, runs $((SECONDS - t0))s"
        [ ${#failed[@]} -eq 0 ] || { echo "fuzz smoke failed: ${failed[*]}" >&2; exit 1; }
        exit 0
        ;;
    --list)
        sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ/Cargo.toml" | grep -v '^pgtenant-fuzz$'
        exit 0
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    '' ) ;;
    *[!0-9]*) ;;
    *) seconds=$1; shift ;;
esac
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ/Cargo.toml" | grep -v '^pgtenant-fuzz$')
fi

say() { printf '==> %s\n' "$*"; }
die() {
    echo "fuzz.sh: $*" >&2
    exit 1
}

t_start=$SECONDS
# cargo-fuzz wants nightly for its sanitizers; with `-s none`, as here, it also builds on
# stable (cargo-fuzz's documentation says so), which is what a machine without nightly
# (it cannot be fetched from these machines' registries) falls back to.
if cargo +nightly --version >/dev/null 2>&1; then
    tc=(+nightly)
else
    tc=()
    echo "fuzz.sh: the nightly Rust toolchain is MISSING (cargo +nightly fails);" \
        "building with $(cargo --version) and -s none instead" >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (cargo install --locked cargo-fuzz)"
    nice -n 15 cargo install --locked cargo-fuzz
fi
say "$(cargo "${tc[@]}" --version); $(cargo fuzz --version)"
t_tools=$((SECONDS - t_start))

# Which dictionary each target reads.
dict_of() {
    case "$1" in
        plan | mask | mask_tokens | hint | command) echo "$FUZZ/dict/sql.dict" ;;
        decode | extended | frame | scram | session) echo "$FUZZ/dict/protocol.dict" ;;
        admin) echo "$FUZZ/dict/admin.dict" ;;
        config_toml | pgbouncer_ini) echo "$FUZZ/dict/config.dict" ;;
        *) echo "" ;;
    esac
}

say "building ${#targets[@]} fuzz targets (nice -n 15, -s none)"
t0=$SECONDS
if [ ${#targets[@]} -eq "$(sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ/Cargo.toml" | grep -vc '^pgtenant-fuzz$')" ]; then
    nice -n 15 cargo "${tc[@]}" fuzz build -s none
else
    for t in "${targets[@]}"; do nice -n 15 cargo "${tc[@]}" fuzz build -s none "$t"; done
fi
t_build=$((SECONDS - t0))

mkdir -p "$FUZZ/logs"
failed=()
rows=()
t0=$SECONDS
for t in "${targets[@]}"; do
    mkdir -p "$FUZZ/corpus/$t" "$FUZZ/artifacts/$t"
    args=(-timeout=10 -rss_limit_mb=2048 -max_len="${FUZZ_MAX_LEN:-4096}" -print_final_stats=1
          -artifact_prefix="$FUZZ/artifacts/$t/")
    d=$(dict_of "$t")
    [ -n "$d" ] && args+=(-dict="$d")
    dirs=("$FUZZ/corpus/$t")
    [ -d "$FUZZ/seeds/$t" ] && dirs+=("$FUZZ/seeds/$t")
    if [ $smoke -eq 1 ]; then
        args+=(-max_total_time="${FUZZ_SMOKE_SECONDS:-1}")
        say "$t: seeds and ${FUZZ_SMOKE_SECONDS:-1}s"
    else
        args+=(-max_total_time="$seconds")
        say "$t: ${seconds}s"
    fi
    log="$FUZZ/logs/$t.log"
    if nice -n 15 cargo "${tc[@]}" fuzz run -s none "$t" "${dirs[@]}" -- "${args[@]}" >"$log" 2>&1; then
        status=ok
    else
        status=CRASH
        failed+=("$t")
        grep -E "^(==[0-9]+== ERROR|thread '.*' panicked|SUMMARY|Test unit written)" "$log" | head -5 || true
    fi
    # libFuzzer's last status line and final stats: coverage and speed.
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\) .*/\1/p' <<<"$last")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/.* exec\/s: \([0-9]*\) .*/\1/p' <<<"$last")
    rows+=("$(printf '%-14s %-6s %10s %8s %7s %7s' "$t" "$status" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}")")
done
t_runs=$((SECONDS - t0))

say "summary"
printf '%-14s %-6s %10s %8s %7s %7s\n' target status execs exec/s cov ft
printf '%s\n' "${rows[@]}"
echo "time: tools ${t_tools}s, build ${t_build}s, runs ${t_runs}s, total $((SECONDS - t_start))s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "CRASHED: ${failed[*]}: inputs in $FUZZ/artifacts/<target>/, logs in $FUZZ/logs/<target>.log" >&2
    echo "reproduce: cargo +nightly fuzz run -s none <target> $FUZZ/artifacts/<target>/<file>" >&2
    exit 1
fi
echo "no crash"
