#!/usr/bin/env bash
# End-to-end test: a real Bazel client executing every action remotely on Strata.
#
# Usage: Tests/e2e/bazel-remote-execution.sh EXECUTOR_HOST:PORT [CACHE_HOST:PORT]
#
# An Execution service must be listening on EXECUTOR (with workers connected to its Bots service),
# and a CAS/action cache on CACHE (default: EXECUTOR, the one-process deployment); this script never
# starts or stops them. It copies Tests/e2e/workspace to a fresh temp dir (own --output_user_root) and:
#   1. builds //... locally (no remote flags) and records the outputs' sha256 sums;
#   2. `clean --expunge`, builds with --remote_executor: every spawn must run remotely ("remote" in
#      the execution log), outputs identical to the local build;
#   3. `clean --expunge`, builds again: every spawn must be a remote cache hit, outputs identical;
#   4. builds with --remote_default_exec_properties=OSFamily=linux (a property the workers offer:
#      new action keys, so every spawn runs remotely again), then with an unregistered property,
#      which must fail with FAILED_PRECONDITION naming it;
#   5. with BAZEL_E2E_RESTART=PREFIX: a build with a slow action (a 20 s genrule added to the copy)
#      and --experimental_remote_execution_keepalive; once that action runs remotely the script
#      creates PREFIX.running and waits (up to 120 s) for PREFIX.restarted: the caller restarts the
#      execution process meanwhile; the build must still succeed.
# On success the last line is:
#   bazel remote execution e2e: N actions executed remotely, N remote cache hits, outputs identical
#
# Environment (all optional): BAZEL, BAZEL_E2E_TIMEOUT (seconds per bazel command, default 600),
# BAZEL_E2E_INSTANCE_NAME, BAZEL_E2E_KEEP_TMP=1, BAZEL_E2E_VERBOSE=1, BAZEL_E2E_RESTART=PREFIX.
set -euo pipefail

die() {
    echo "bazel remote execution e2e: FAIL: $*" >&2
    exit 1
}
say() { echo "bazel remote execution e2e: $*" >&2; }

[[ $# -eq 1 || $# -eq 2 ]] || { echo "usage: $0 EXECUTOR_HOST:PORT [CACHE_HOST:PORT]" >&2; exit 2; }
EXECUTOR="${1#grpc://}"
CACHE="${2:-$1}"
CACHE="${CACHE#grpc://}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BAZEL="${BAZEL:-bazel}"
TIMEOUT="${BAZEL_E2E_TIMEOUT:-600}"
command -v "$BAZEL" >/dev/null 2>&1 || die "bazel not found (set BAZEL=...)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/strata-bazel-rbe.XXXXXX")"
WS="$TMP/workspace"
DEPS="$TMP/workspace-deps"
ROOT="$TMP/output_user_root"
LOGS="$TMP/logs"
mkdir -p "$LOGS"
cp -R "$SCRIPT_DIR/workspace" "$WS"
cp -R "$SCRIPT_DIR/workspace-deps" "$DEPS"
STARTUP=(--nohome_rc --noworkspace_rc "--output_user_root=$ROOT" --max_idle_secs=300)

cleanup() {
    local rc=$?
    [[ -n "${BG_BUILD:-}" ]] && kill "$BG_BUILD" 2>/dev/null || true
    (cd "$WS" && timeout 120 "$BAZEL" "${STARTUP[@]}" shutdown >/dev/null 2>&1) || true
    if [[ "${BAZEL_E2E_KEEP_TMP:-0}" == 1 ]]; then
        say "kept temp dir $TMP"
    else
        chmod -R u+w "$TMP" 2>/dev/null || true
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A fresh value per run in every action key: nothing can come from an earlier run's cache entries.
NONCE="$(date +%s%N)-$$-$RANDOM"
COMMON_FLAGS=(
    --color=no --curses=no --symlink_prefix=/
    --experimental_repository_disable_download --repository_cache=
    "--override_repository=rules_cc=$DEPS/rules_cc"
    "--override_repository=rules_java=$DEPS/rules_java"
    "--override_repository=remote_coverage_tools=$DEPS/remote_coverage_tools"
    --nosandbox_debug --incompatible_strict_action_env
    "--action_env=STRATA_E2E_NONCE=$NONCE" "--host_action_env=STRATA_E2E_NONCE=$NONCE"
)
REMOTE_FLAGS=(
    "--remote_executor=grpc://$EXECUTOR" "--remote_cache=grpc://$CACHE"
    --remote_timeout=120 --remote_download_outputs=all
    # The Bazel 4.2 default is 'remote' for every spawn when an executor is set; said explicitly.
    --spawn_strategy=remote --genrule_strategy=remote --strategy=Genrule=remote
)
[[ -n "${BAZEL_E2E_INSTANCE_NAME:-}" ]] && REMOTE_FLAGS+=("--remote_instance_name=$BAZEL_E2E_INSTANCE_NAME")

run_bazel() { # run_bazel LOGFILE ARGS...  (fails the test when bazel fails)
    local log="$1" rc=0
    shift
    if [[ "${BAZEL_E2E_VERBOSE:-0}" == 1 ]]; then
        (cd "$WS" && timeout "$TIMEOUT" "$BAZEL" "${STARTUP[@]}" "$@" 2>&1) | tee "$log" >&2 || rc=$?
    else
        (cd "$WS" && timeout "$TIMEOUT" "$BAZEL" "${STARTUP[@]}" "$@") >"$log" 2>&1 || rc=$?
    fi
    if [[ $rc -ne 0 ]]; then
        echo "----- last lines of $(basename "$log") -----" >&2
        tail -n 40 "$log" >&2
        die "bazel $1 failed (exit $rc)"
    fi
}

# "TOTAL REMOTE HITS" from an execution log: one "runner" per spawn.
count_spawns() {
    local total remote hits
    total="$(grep -c '^  "runner": ' "$1" || true)"
    remote="$(grep -c '^  "runner": "remote",$' "$1" || true)"
    hits="$(grep -c '^  "runner": "remote cache hit",$' "$1" || true)"
    echo "$total $remote $hits"
}

hash_outputs() { # OUTFILE
    local out
    out="$(cd "$WS" && timeout "$TIMEOUT" "$BAZEL" "${STARTUP[@]}" info "${COMMON_FLAGS[@]}" output_path 2>/dev/null)" \
        || die "bazel info output_path failed"
    (cd "$out" && find . -path './*/bin/*' -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) >"$1"
    [[ -s "$1" ]] || die "no outputs found under $out"
    HELLO="$(find "$out" -path '*-fastbuild/bin/hello' -type f | head -n 1)"
}

say "$($BAZEL "${STARTUP[@]}" --version 2>/dev/null | head -n 1 || echo bazel), executor grpc://$EXECUTOR, cache grpc://$CACHE"
START=$SECONDS

# 1. Local.
say "build 1: local..."
run_bazel "$LOGS/local.log" build "${COMMON_FLAGS[@]}" //...
hash_outputs "$LOGS/sha256-local.txt"
run_bazel "$LOGS/clean1.log" clean --expunge --color=no --curses=no

# 2. Remote execution.
say "build 2: every action executed remotely..."
run_bazel "$LOGS/remote.log" build "${COMMON_FLAGS[@]}" "${REMOTE_FLAGS[@]}" "--execution_log_json_file=$LOGS/exec-remote.json" //...
read -r TOTAL REMOTE HITS < <(count_spawns "$LOGS/exec-remote.json")
say "build 2: $(grep -E '^INFO: [0-9]+ process' "$LOGS/remote.log" | tail -n 1 | sed 's/^INFO: //')"
[[ "$TOTAL" -gt 0 ]] || die "build 2 ran no spawns"
if [[ "$REMOTE" -ne "$TOTAL" ]]; then
    grep '^  "runner": ' "$LOGS/exec-remote.json" | sort | uniq -c >&2
    die "build 2: only $REMOTE of $TOTAL spawns ran remotely"
fi
hash_outputs "$LOGS/sha256-remote.txt"
diff -u "$LOGS/sha256-local.txt" "$LOGS/sha256-remote.txt" >&2 || die "remotely built outputs differ from the local build"
[[ -x "$HELLO" && "$("$HELLO")" == "hello from strata e2e" ]] || die "the remotely built hello binary does not run"

# 3. Remote cache hits.
run_bazel "$LOGS/clean2.log" clean --expunge --color=no --curses=no
say "build 3: every action a remote cache hit..."
run_bazel "$LOGS/hits.log" build "${COMMON_FLAGS[@]}" "${REMOTE_FLAGS[@]}" "--execution_log_json_file=$LOGS/exec-hits.json" //...
read -r TOTAL3 REMOTE3 HITS3 < <(count_spawns "$LOGS/exec-hits.json")
[[ "$TOTAL3" -eq "$TOTAL" && "$HITS3" -eq "$TOTAL3" ]] || die "build 3: $HITS3 of $TOTAL3 spawns were remote cache hits (build 2 ran $TOTAL)"
hash_outputs "$LOGS/sha256-hits.txt"
diff -u "$LOGS/sha256-local.txt" "$LOGS/sha256-hits.txt" >&2 || die "outputs from the cache differ from the local build"

# 4. Platform properties.
say "build 4: --remote_default_exec_properties=OSFamily=linux..."
run_bazel "$LOGS/platform.log" build "${COMMON_FLAGS[@]}" "${REMOTE_FLAGS[@]}" --remote_default_exec_properties=OSFamily=linux \
    "--execution_log_json_file=$LOGS/exec-platform.json" //...
read -r TOTAL4 REMOTE4 _ < <(count_spawns "$LOGS/exec-platform.json")
[[ "$REMOTE4" -eq "$TOTAL4" && "$TOTAL4" -gt 0 ]] || die "build 4: $REMOTE4 of $TOTAL4 spawns ran remotely"
say "build 5: an unregistered property must be refused..."
rc=0
(cd "$WS" && timeout "$TIMEOUT" "$BAZEL" "${STARTUP[@]}" build "${COMMON_FLAGS[@]}" "${REMOTE_FLAGS[@]}" \
    --remote_default_exec_properties=strataunknownkey=1 //...) >"$LOGS/unknown.log" 2>&1 || rc=$?
if [[ $rc -eq 0 ]] || ! grep -q 'FAILED_PRECONDITION' "$LOGS/unknown.log" || ! grep -q 'strataunknownkey' "$LOGS/unknown.log"; then
    tail -n 30 "$LOGS/unknown.log" >&2
    die "a build with an unregistered platform property was not refused with FAILED_PRECONDITION naming it (exit $rc)"
fi
say "refused: $(grep -m1 -o 'FAILED_PRECONDITION.*' "$LOGS/unknown.log" | cut -c1-200)"

# 5. The execution process restarted in the middle of an action.
if [[ -n "${BAZEL_E2E_RESTART:-}" ]]; then
    mkdir -p "$WS/slow"
    cat >"$WS/slow/BUILD" <<'EOF'
genrule(
    name = "slow",
    outs = ["slow.txt"],
    cmd = "sleep 20 && echo slow > $@",
)
EOF
    say "build 6: a 20 s action while the caller restarts the execution process..."
    (cd "$WS" && timeout "$TIMEOUT" "$BAZEL" "${STARTUP[@]}" build "${COMMON_FLAGS[@]}" "${REMOTE_FLAGS[@]}" \
        --experimental_remote_execution_keepalive //slow) >"$LOGS/restart.log" 2>&1 &
    BG_BUILD=$!
    # The action is running remotely once the build reports it (Bazel prints "... remote" while it runs);
    # give it a few seconds to reach a worker.
    sleep 8
    touch "$BAZEL_E2E_RESTART.running"
    for _ in $(seq 1 1200); do
        [[ -e "$BAZEL_E2E_RESTART.restarted" ]] && break
        sleep 0.1
    done
    [[ -e "$BAZEL_E2E_RESTART.restarted" ]] || die "nobody created $BAZEL_E2E_RESTART.restarted within 120 s"
    rc=0
    wait "$BG_BUILD" || rc=$?
    BG_BUILD=""
    if [[ $rc -ne 0 ]]; then
        tail -n 40 "$LOGS/restart.log" >&2
        die "the build did not survive the execution process's restart (exit $rc)"
    fi
    say "build 6 finished across the restart"
fi

say "$((SECONDS - START))s"
echo "bazel remote execution e2e: $TOTAL actions executed remotely, $HITS3 remote cache hits, outputs identical"
