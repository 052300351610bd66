#!/usr/bin/env bash
# Run the whole pgtenant test suite on a fresh Debian/Ubuntu machine.
#
#   ./scripts/test.sh
#
# Installs what is missing (PostgreSQL, pgbouncer, openssl, python3-venv/pip) with
# apt-get (via sudo when not root), then runs fmt, clippy and every test target.
# The tests start their own PostgreSQL servers on free loopback ports; no system
# service is used. Stops at the first failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCRIPT_NAME="test.sh"
# as_root, apt_install, need_cargo (shared with demo.sh and loadbench.sh).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh

step_names=()
step_times=()
t_all=$SECONDS

say() { printf '\n==> %s\n' "$*"; }

run_step() {
    local name=$1
    shift
    say "$name: $*"
    local t0=$SECONDS
    if ! "$@"; then
        echo "FAILED: $name (after $((SECONDS - t0))s)" >&2
        exit 1
    fi
    step_names+=("$name")
    step_times+=($((SECONDS - t0)))
}

have_pkg() { dpkg -s "$1" >/dev/null 2>&1; }

have_pg_server() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && command -v psql >/dev/null 2>&1
}

install_missing() {
    local missing=()
    have_pg_server || missing+=(postgresql)
    have_pkg postgresql-contrib || missing+=(postgresql-contrib)
    command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    have_pkg python3-venv || missing+=(python3-venv)
    have_pkg python3-pip || missing+=(python3-pip)
    if [ ${#missing[@]} -eq 0 ]; then
        echo "system packages: all present"
        return 0
    fi
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}"
}

check_rust() {
    need_cargo
    if command -v rustup >/dev/null 2>&1; then
        cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
        cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
    fi
    cargo --version
}

run_step "install packages" install_missing
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "the 'postgres' OS user is missing (the postgresql package creates it)" >&2
    exit 1
fi
run_step "rust toolchain" check_rust

# One test thread more than cores: the integration tests mostly wait on their PostgreSQL
# servers and timers (on 2 cores, 3 threads: 170 s a pass instead of 217 s, the CPU ~80 %
# busy instead of ~50 %). 4 threads made timing-bound tests fail now and then.
export RUST_TEST_THREADS=$(($(nproc) + 1))
# A clean build without incremental compilation: on 2 cores it costs less CPU (16 codegen
# units instead of 256, no dependency graph saved), and pgtenant built for the tests is
# then the same build the fuzz smoke's workspace (where it is a plain dependency, never
# incremental) can reuse. Set CARGO_INCREMENTAL=1 to keep incremental builds.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
run_step "cargo fmt" cargo fmt --all -- --check
run_step "cargo clippy" cargo clippy --all-targets -- -D warnings
run_step "cargo test" cargo test --all-targets
# The integration tests again with every pgtenant on the epoll engine: `cargo test` ran
# them under the default (io_engine = auto: io_uring where the kernel allows it, as here),
# and epoll is what runs where a seccomp profile refuses io_uring (GKE, Docker).
run_step "it, io_engine=epoll" env PGTENANT_TEST_IO_ENGINE=epoll cargo test --test it

# fuzz/ (its own cargo workspace, not part of the steps above): build every fuzz target
# with plain cargo into target/, reusing what `cargo test` just built (same dev profiles
# and dependency features; no nightly, no cargo-fuzz, no coverage instrumentation), and
# run each over its committed seeds (or 2000 generated inputs): the targets keep building
# and their properties hold on the seeds. ~70 s on 2 cores after `cargo test` (ring,
# rustls and pgtenant are built again: libfuzzer-sys builds `cc` with other features).
# Real fuzzing: scripts/fuzz.sh.
run_step "fuzz smoke" scripts/fuzz.sh --ci

# deploy/: Prometheus alert rules (promtool, from Debian's `prometheus` package) and the
# Kubernetes manifests, validated offline against the API schemas (`kubernetes-validate`
# from PyPI, in a venv under target/). Neither is skipped: a failed install fails the run.
check_alert_rules() {
    if ! command -v promtool >/dev/null 2>&1; then
        echo "installing: prometheus (for promtool)"
        apt_install prometheus || return 1
    fi
    # run_step calls this inside `if`, where set -e is off: chain explicitly.
    promtool check rules deploy/prometheus/alerts.yml || return 1
    promtool test rules deploy/prometheus/alerts_test.yml
}

K8S_VENV=target/k8s-validate-venv
K8S_VERSION=1.30.0
validate_manifests() {
    if [ ! -x "$K8S_VENV/bin/kubernetes-validate" ]; then
        python3 -m venv "$K8S_VENV" || return 1
        "$K8S_VENV/bin/pip" install -q kubernetes-validate || return 1
    fi
    "$K8S_VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" deploy/k8s/*.yaml
}

# The dashboard and alert rules name only series, labels and values /metrics serves, and
# the dashboard shows every family (also parses the dashboard JSON).
run_step "metric names" python3 scripts/check_metric_names.py
run_step "alert rules" check_alert_rules
run_step "k8s manifests" validate_manifests

say "summary"
for i in "${!step_names[@]}"; do
    printf '  %-18s %5ss\n' "${step_names[$i]}" "${step_times[$i]}"
done
printf '  %-18s %5ss\n' "total" "$((SECONDS - t_all))"
echo "all checks passed"
