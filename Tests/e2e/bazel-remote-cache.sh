#!/usr/bin/env bash
# End-to-end test: a real Bazel client against a REAPI remote cache.
#
# Usage: Tests/e2e/bazel-remote-cache.sh HOST:PORT
#        Tests/e2e/bazel-remote-cache.sh http://[USER:PASSWORD@]HOST:PORT[/PREFIX]
#
# A REAPI gRPC cache server must already be listening on HOST:PORT (or, given an
# http:// URL, a server speaking Bazel's HTTP cache protocol there); this script
# never starts or stops it. It:
#   1. copies Tests/e2e/workspace (and the offline stand-in repositories in
#      Tests/e2e/workspace-deps) to a fresh temp dir and uses its own
#      --output_user_root, so nothing is shared with any other Bazel run;
#   2. build 1: `bazel build //... --remote_cache=grpc://HOST:PORT`; every
#      spawn runs locally (a per-run nonce in the action env makes the action
#      keys new) and its results are uploaded; sha256 of all outputs recorded;
#   3. `bazel clean --expunge`;
#   4. build 2 with the same flags: asserts that EVERY spawn was a remote cache
#      hit (from Bazel's "INFO: N processes: ..." line and from the
#      --execution_log_json_file), and that all outputs are byte-identical to
#      build 1.
#   5. with BAZEL_E2E_EVICT_DIR set (the server's !disk-storage path): deletes
#      the blob of one action's output (medium.txt) behind the server's back,
#      cleans, and builds a third time: that action must run again (the cache
#      must not hand out an entry whose output is gone) and every other action
#      must still be a cache hit, with outputs identical.
# On success the last line is:
#   bazel e2e: N actions, N remote cache hits, outputs identical
#
# Environment (all optional):
#   BAZEL                       Bazel binary (default: bazel; tested with Debian's
#                               bazel-bootstrap 4.2.3)
#   BAZEL_E2E_TIMEOUT           seconds allowed per bazel command (default 600)
#   BAZEL_E2E_INSTANCE_NAME     passed as --remote_instance_name
#   BAZEL_E2E_KEEP_TMP=1        keep the temp dir (logs, execution logs) for debugging
#   BAZEL_E2E_VERBOSE=1         also stream Bazel's output to stderr
#   BAZEL_E2E_EVICT_DIR=DIR     the server's !disk-storage path: run step 5
#   BAZEL_E2E_PAUSE=PREFIX      after the clean, create PREFIX.ready and wait (up
#                               to 120 s) for PREFIX.go before build 2: the caller
#                               restarts the server meanwhile, so build 2's hits
#                               prove the cache survives a restart
#   BAZEL_E2E_REMOTE_HEADER=H   a server with `authorization:`: first a build without
#                               the header must fail with UNAUTHENTICATED, then every
#                               build passes --remote_header=H (e.g.
#                               "authorization=Bearer <JWT>")
#   BAZEL_E2E_HTTP_REFUSED=URL  HTTP mode with credentials: first a build with
#                               --remote_cache=URL (no credentials) must get 401
#                               answers (Bazel warns and builds locally), then the
#                               builds use the given URL
#   BAZEL_E2E_DISK_CACHE=DIR    self-test mode only: use --disk_cache=DIR instead
#                               of a remote cache (HOST:PORT is then not needed)
set -euo pipefail

die() {
    echo "bazel e2e: FAIL: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 HOST:PORT" >&2
    exit 2
}

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BAZEL="${BAZEL:-bazel}"
TIMEOUT="${BAZEL_E2E_TIMEOUT:-600}"

# ---------------------------------------------------------------- arguments --
CACHE_FLAGS=()
if [[ -n "${BAZEL_E2E_DISK_CACHE:-}" ]]; then
    [[ $# -le 1 ]] || usage
    mkdir -p "$BAZEL_E2E_DISK_CACHE"
    DISK_CACHE="$(cd "$BAZEL_E2E_DISK_CACHE" && pwd)"
    CACHE_FLAGS+=("--disk_cache=$DISK_CACHE")
    CACHE_DESC="disk cache $DISK_CACHE (self-test mode)"
elif [[ $# -eq 1 && ( "$1" == http://* || "$1" == https://* ) ]]; then
    CACHE_FLAGS+=("--remote_cache=$1")
    # The URL's password stays out of the output.
    CACHE_DESC="HTTP cache $(sed -E 's#//[^/@]*@#//USER:***@#' <<<"$1")"
else
    [[ $# -eq 1 ]] || usage
    ENDPOINT="${1#grpc://}"
    [[ "$ENDPOINT" == *:* && -n "${ENDPOINT##*:}" ]] || usage
    CACHE_FLAGS+=("--remote_cache=grpc://$ENDPOINT")
    if [[ -n "${BAZEL_E2E_INSTANCE_NAME:-}" ]]; then
        CACHE_FLAGS+=("--remote_instance_name=$BAZEL_E2E_INSTANCE_NAME")
    fi
    CACHE_DESC="remote cache grpc://$ENDPOINT"
fi

command -v "$BAZEL" >/dev/null 2>&1 || die "bazel not found (set BAZEL=...)"
[[ -f "$SCRIPT_DIR/workspace/WORKSPACE" ]] || die "missing $SCRIPT_DIR/workspace"
[[ -d "$SCRIPT_DIR/workspace-deps" ]] || die "missing $SCRIPT_DIR/workspace-deps"

# ------------------------------------------------------------- temp + trap --
TMP="$(mktemp -d "${TMPDIR:-/tmp}/strata-bazel-e2e.XXXXXX")"
WS="$TMP/workspace"
DEPS="$TMP/workspace-deps"
ROOT="$TMP/output_user_root"
LOGS="$TMP/logs"
mkdir -p "$LOGS"
cp -R "$SCRIPT_DIR/workspace" "$WS"
cp -R "$SCRIPT_DIR/workspace-deps" "$DEPS"

# Startup options. The Debian package's /etc/bazel/bazelrc (install_base,
# host_javabase=@local_jdk) is needed, so only the user and workspace rc files
# are ignored. --max_idle_secs is a safety net should the trap never run.
STARTUP=(
    --nohome_rc
    --noworkspace_rc
    "--output_user_root=$ROOT"
    --max_idle_secs=300
)

cleanup() {
    local rc=$?
    if [[ -d "$WS" ]]; then
        (cd "$WS" && timeout 120 "$BAZEL" "${STARTUP[@]}" shutdown >/dev/null 2>&1) || true
    fi
    if [[ "${BAZEL_E2E_KEEP_TMP:-0}" == 1 ]]; then
        echo "bazel e2e: kept temp dir $TMP" >&2
    else
        # Bazel leaves its outputs read-only.
        chmod -R u+w "$TMP" 2>/dev/null || true
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- flags --
# A fresh value per run: it is part of every action key (target and host
# configuration), so build 1 can never be served from an earlier run's entries
# and must upload, and build 2 can only hit what build 1 uploaded.
NONCE="$(date +%s%N)-$$-$RANDOM"

BUILD_FLAGS=(
    --color=no
    --curses=no
    # No convenience symlinks in the workspace (they would also be scanned by //...).
    --symlink_prefix=/
    # Offline: never try to download; use the stand-ins for the repositories
    # Bazel 4.2's @bazel_tools references (@rules_cc, @rules_java for
    # registered toolchains; @remote_coverage_tools for test rules).
    --experimental_repository_disable_download
    --repository_cache=
    "--override_repository=rules_cc=$DEPS/rules_cc"
    "--override_repository=rules_java=$DEPS/rules_java"
    "--override_repository=remote_coverage_tools=$DEPS/remote_coverage_tools"
    # Debian's /etc/bazel/bazelrc turns this on; it floods the output.
    --nosandbox_debug
    # Action keys must not depend on the caller's PATH etc.
    --incompatible_strict_action_env
    "--action_env=STRATA_E2E_NONCE=$NONCE"
    "--host_action_env=STRATA_E2E_NONCE=$NONCE"
    # Explicit defaults that this test relies on.
    --remote_accept_cached
    --remote_upload_local_results
    --remote_download_outputs=all
    --remote_timeout=60
    "${CACHE_FLAGS[@]}"
)

run_bazel() { # run_bazel LOGFILE ARGS...
    local log="$1"
    shift
    local rc=0
    if [[ "${BAZEL_E2E_VERBOSE:-0}" == 1 ]]; then
        (cd "$WS" && timeout "$TIMEOUT" "$BAZEL" "${STARTUP[@]}" "$@" 2>&1) | tee "$log" >&2 || rc=$?
    else
        (cd "$WS" && timeout "$TIMEOUT" "$BAZEL" "${STARTUP[@]}" "$@") >"$log" 2>&1 || rc=$?
    fi
    if [[ $rc -ne 0 ]]; then
        echo "----- last lines of $(basename "$log") -----" >&2
        tail -n 40 "$log" >&2
        echo "-----" >&2
        [[ $rc -eq 124 ]] && die "bazel $1 timed out after ${TIMEOUT}s"
        die "bazel $1 failed (exit $rc)"
    fi
}

# Fails on any warning about the remote/disk cache (failed upload or lookup):
# Bazel only warns about those and carries on.
check_no_cache_warnings() { # LOGFILE LABEL
    local bad
    bad="$(grep -iE -A3 '^WARNING:.*(remote|cache)' "$1" || true)"
    if [[ -n "$bad" ]]; then
        echo "$bad" >&2
        die "$2: Bazel warned about the cache (see above)"
    fi
}

# Prints "TOTAL HITS" from the execution log: one "runner" per spawn.
count_spawns() { # EXEC_LOG
    local total hits
    total="$(grep -c '^  "runner": ' "$1" || true)"
    hits="$(grep -c '^  "runner": "remote cache hit",$' "$1" || true)"
    echo "$total $hits"
}

# Bazel's summary line, e.g. "INFO: 21 processes: 12 remote cache hit, 9 internal."
process_line() { # LOGFILE
    grep -E '^INFO: [0-9]+ process(es)?[:.]' "$1" | tail -n 1
}

# "remote cache hit" is also what 4.2 prints for --disk_cache hits; newer
# Bazels say "disk cache hit". Accept both.
line_count() { # LINE REGEX  -> the N in "N <regex>" (0 if absent)
    local n
    n="$(grep -oE "[0-9]+ ($2)" <<<"$1" | awk '{s += $1} END {print s + 0}')"
    echo "${n:-0}"
}

# Sets OUT_PATH (bazel-out) and writes "sha256  ./CONFIG/bin/PATH" lines.
hash_outputs() { # OUTFILE
    OUT_PATH="$(cd "$WS" && timeout "$TIMEOUT" "$BAZEL" "${STARTUP[@]}" info "${BUILD_FLAGS[@]}" output_path 2>/dev/null)" \
        || die "bazel info output_path failed"
    [[ -d "$OUT_PATH" ]] || die "output path $OUT_PATH does not exist"
    # Every regular file under the bin dirs of all configurations (target and host).
    (cd "$OUT_PATH" && find . -path './*/bin/*' -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) >"$1"
    [[ -s "$1" ]] || die "no outputs found under $OUT_PATH"
}

output_file() { # NAME -> path of the target-configuration output NAME
    find "$OUT_PATH" -path "*-fastbuild/bin/$1" -type f | head -n 1
}

echo "bazel e2e: $($BAZEL "${STARTUP[@]}" --version 2>/dev/null | head -n 1 || echo bazel), $CACHE_DESC" >&2
echo "bazel e2e: temp dir $TMP" >&2
START=$SECONDS

# ------------------------------------------------- without credentials --
# The server refuses a client without its token: Bazel must fail, saying UNAUTHENTICATED (it asks
# for the server's Capabilities before building). The clean that follows removes anything it built.
if [[ -n "${BAZEL_E2E_REMOTE_HEADER:-}" ]]; then
    echo "bazel e2e: build without --remote_header (must fail with UNAUTHENTICATED)..." >&2
    rc=0
    (cd "$WS" && timeout "$TIMEOUT" "$BAZEL" "${STARTUP[@]}" build "${BUILD_FLAGS[@]}" //...) \
        >"$LOGS/unauthenticated.log" 2>&1 || rc=$?
    if [[ $rc -eq 0 ]] || ! grep -q UNAUTHENTICATED "$LOGS/unauthenticated.log"; then
        tail -n 40 "$LOGS/unauthenticated.log" >&2
        die "a build without the remote header did not fail with UNAUTHENTICATED (exit $rc)"
    fi
    echo "bazel e2e: $(grep -m1 -o 'UNAUTHENTICATED.*' "$LOGS/unauthenticated.log")" >&2
    run_bazel "$LOGS/clean-unauthenticated.log" clean --expunge --color=no --curses=no
    BUILD_FLAGS+=("--remote_header=$BAZEL_E2E_REMOTE_HEADER")
fi

# The HTTP cache refuses a client without credentials: Bazel warns (401) about every lookup and
# upload and builds locally. The clean that follows removes what it built.
if [[ -n "${BAZEL_E2E_HTTP_REFUSED:-}" ]]; then
    echo "bazel e2e: build with --remote_cache=$BAZEL_E2E_HTTP_REFUSED (must be refused with 401)..." >&2
    run_bazel "$LOGS/unauthenticated.log" build "${BUILD_FLAGS[@]}" "--remote_cache=$BAZEL_E2E_HTTP_REFUSED" //...
    # Bazel 4.2 writes "WARNING: Reading from Remote Cache:" and the status on the next line.
    grep -A1 -E '^WARNING: (Reading from|Writing to) Remote Cache' "$LOGS/unauthenticated.log" | grep -q '^401 Unauthorized' \
        || { tail -n 40 "$LOGS/unauthenticated.log" >&2; die "a build without credentials was not refused with 401"; }
    echo "bazel e2e: refused: $(grep -m1 -A1 '^401 Unauthorized' "$LOGS/unauthenticated.log" | tail -n 1 | cut -c1-160)" >&2
    run_bazel "$LOGS/clean-unauthenticated.log" clean --expunge --color=no --curses=no
fi

# ----------------------------------------------------------------- build 1 --
echo "bazel e2e: build 1 (cold, uploads to the cache)..." >&2
run_bazel "$LOGS/build1.log" build "${BUILD_FLAGS[@]}" "--execution_log_json_file=$LOGS/exec1.json" //...
check_no_cache_warnings "$LOGS/build1.log" "build 1"
hash_outputs "$LOGS/sha256-1.txt"
LINE1="$(process_line "$LOGS/build1.log")"
read -r TOTAL1 HITS1 < <(count_spawns "$LOGS/exec1.json")
echo "bazel e2e: build 1: ${LINE1#INFO: }" >&2
[[ "$TOTAL1" -gt 0 ]] || die "build 1 ran no spawns (execution log empty?)"
[[ "$HITS1" -eq 0 ]] || die "build 1 had $HITS1 cache hits although its action keys are new (nonce $NONCE)"

# Sanity: the workspace really produced what this test claims to exercise.
LARGE="$(output_file large.txt)"
[[ -n "$LARGE" && "$(stat -c %s "$LARGE")" -gt $((4 * 1024 * 1024)) ]] || die "large.txt missing or not > 4 MiB"
EMPTY="$(output_file empty.txt)"
[[ -n "$EMPTY" && ! -s "$EMPTY" ]] || die "empty.txt missing or not empty"

# ------------------------------------------------------------------- clean --
echo "bazel e2e: clean --expunge..." >&2
run_bazel "$LOGS/clean.log" clean --expunge --color=no --curses=no

if [[ -n "${BAZEL_E2E_PAUSE:-}" ]]; then
    echo "bazel e2e: paused for a server restart..." >&2
    touch "$BAZEL_E2E_PAUSE.ready"
    for _ in $(seq 1 1200); do
        [[ -e "$BAZEL_E2E_PAUSE.go" ]] && break
        sleep 0.1
    done
    [[ -e "$BAZEL_E2E_PAUSE.go" ]] || die "nobody created $BAZEL_E2E_PAUSE.go within 120 s"
fi

# ----------------------------------------------------------------- build 2 --
echo "bazel e2e: build 2 (everything must come from the cache)..." >&2
run_bazel "$LOGS/build2.log" build "${BUILD_FLAGS[@]}" "--execution_log_json_file=$LOGS/exec2.json" //...
check_no_cache_warnings "$LOGS/build2.log" "build 2"
hash_outputs "$LOGS/sha256-2.txt"
LINE2="$(process_line "$LOGS/build2.log")"
read -r TOTAL2 HITS2 < <(count_spawns "$LOGS/exec2.json")
echo "bazel e2e: build 2: ${LINE2#INFO: }" >&2

# 1) Execution log: every spawn is a cache hit, and it is the same set as build 1.
if [[ "$HITS2" -ne "$TOTAL2" ]]; then
    grep '^  "runner": ' "$LOGS/exec2.json" | sort | uniq -c >&2
    die "build 2: only $HITS2 of $TOTAL2 spawns were remote cache hits"
fi
[[ "$TOTAL2" -eq "$TOTAL1" ]] || die "build 2 ran $TOTAL2 spawns, build 1 ran $TOTAL1"

# 2) Bazel's own summary line: N processes = hits + internal, nothing else.
[[ -n "$LINE2" ]] || die "build 2: no 'INFO: N processes' line in Bazel's output"
PROCS2="$(grep -oE '^INFO: [0-9]+' <<<"$LINE2" | grep -oE '[0-9]+')"
LINE_HITS2="$(line_count "$LINE2" 'remote cache hit|disk cache hit')"
INTERNAL2="$(line_count "$LINE2" 'internal')"
if [[ "$LINE_HITS2" -ne "$HITS2" || $((LINE_HITS2 + INTERNAL2)) -ne "$PROCS2" ]]; then
    die "build 2: expected only cache hits and internal processes, got: $LINE2"
fi

# 3) Outputs byte-identical.
if ! diff -u "$LOGS/sha256-1.txt" "$LOGS/sha256-2.txt" >"$LOGS/sha256.diff"; then
    cat "$LOGS/sha256.diff" >&2
    die "outputs of build 2 differ from build 1"
fi
NFILES="$(wc -l <"$LOGS/sha256-2.txt")"

# 4) The downloaded binary still runs (executable bit survived the cache).
HELLO="$(output_file hello)"
[[ -n "$HELLO" && -x "$HELLO" ]] || die "hello binary missing or not executable after build 2"
[[ "$("$HELLO")" == "hello from strata e2e" ]] || die "hello binary from the cache printed the wrong thing"

# ------------------------------------------------- build 3: after eviction --
if [[ -n "${BAZEL_E2E_EVICT_DIR:-}" ]]; then
    MEDIUM="$(output_file medium.txt)"
    [[ -n "$MEDIUM" ]] || die "medium.txt missing after build 2"
    MEDIUM_HASH="$(sha256sum "$MEDIUM" | cut -d' ' -f1)"
    MEDIUM_SIZE="$(stat -c %s "$MEDIUM")"
    BLOB="$BAZEL_E2E_EVICT_DIR/cas/${MEDIUM_HASH:0:2}/${MEDIUM_HASH}_${MEDIUM_SIZE}"
    [[ -f "$BLOB" ]] || die "eviction: medium.txt's blob is not at $BLOB"
    rm -f "$BLOB"
    echo "bazel e2e: evicted medium.txt's blob; clean --expunge; build 3 must re-run that one action..." >&2
    run_bazel "$LOGS/clean3.log" clean --expunge --color=no --curses=no
    run_bazel "$LOGS/build3.log" build "${BUILD_FLAGS[@]}" "--execution_log_json_file=$LOGS/exec3.json" //...
    check_no_cache_warnings "$LOGS/build3.log" "build 3"
    hash_outputs "$LOGS/sha256-3.txt"
    read -r TOTAL3 HITS3 < <(count_spawns "$LOGS/exec3.json")
    echo "bazel e2e: build 3: $(process_line "$LOGS/build3.log" | sed 's/^INFO: //')" >&2
    [[ "$TOTAL3" -eq "$TOTAL1" ]] || die "build 3 ran $TOTAL3 spawns, build 1 ran $TOTAL1"
    [[ "$HITS3" -eq $((TOTAL3 - 1)) ]] || die "build 3: expected exactly one action to re-run, got $((TOTAL3 - HITS3))"
    diff -u "$LOGS/sha256-1.txt" "$LOGS/sha256-3.txt" >&2 || die "outputs of build 3 differ from build 1"
    [[ -f "$BLOB" ]] || die "build 3 did not upload medium.txt's blob again"
    echo "bazel e2e: after eviction, 1 action re-ran and $HITS3 were cache hits" >&2
fi

echo "bazel e2e: $NFILES output files compared, $((SECONDS - START))s" >&2
echo "bazel e2e: $TOTAL2 actions, $HITS2 remote cache hits, outputs identical"
