#!/usr/bin/env bash
# Remote execution as BuildGrid's three processes, from config/split/: storage.yml (CAS, ByteStream,
# action cache), execution.yml (Execution, Operations) and bots.yml (Bots), sharing jobs through
# PostgreSQL, with two `strata worker`s. Proves:
#   1. Bazel 4.2.3 with --remote_executor on the execution process and --remote_cache on the storage
#      process: every action executed remotely, outputs identical to a local build; after
#      `clean --expunge` every action a remote cache hit; a matching and an unknown platform property
#      (Tests/e2e/bazel-remote-execution.sh);
#   2. the execution and bots processes restarted while an action runs: Bazel (with
#      --experimental_remote_execution_keepalive) finishes, no job lost;
#   3. the worker running an action is killed (SIGKILL): its session expires (keepalive 10 s here)
#      and the other worker completes the job;
#   4. `bgd operation cancel` on the execution process stops the command on the worker (through the
#      database and the bots process);
#   5. every process stops cleanly on SIGTERM.
#
#   Tests/e2e/execution_split.sh [PYTHON]    (PYTHON has buildgrid==0.9.1; default: pyenv's 3.13.0)
#
# Uses $STRATA_TEST_POSTGRES (tools/services) when set, else starts its own services. Stops everything
# it started. On success the last line is: execution_split e2e: OK
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
python=${1:-$(PYENV_VERSION=3.13.0 pyenv which python3)}
bgd="$(dirname "$python")/bgd"
strata=${STRATA_BINARY:-$root/.build/debug/strata}
[ -x "$bgd" ] || { echo "execution_split e2e: no bgd next to $python: install buildgrid==0.9.1"; exit 1; }

work=$(mktemp -d)
declare -A pid=()
say() { echo "execution_split e2e: $*"; }
fail() {
  echo "execution_split e2e: FAIL: $*"
  for log in "$work"/*.log; do echo "--- $(basename "$log") (last lines)"; tail -n 25 "$log"; done
  exit 1
}
source Tests/e2e/lib/postgres.sh
cleanup() {
  [ -n "${bazel_pid:-}" ] && kill "$bazel_pid" 2>/dev/null || true
  for name in "${!pid[@]}"; do kill -KILL "${pid[$name]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  drop_database
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

fresh_database "strata_split_$$"
export STRATA_POSTGRES_URL=$database_url
export STRATA_STORAGE_ADDRESS="127.0.0.1:$(free_port)"
export STRATA_EXECUTION_ADDRESS="127.0.0.1:$(free_port)"
export STRATA_BOTS_ADDRESS="127.0.0.1:$(free_port)"
export STRATA_STORAGE_PATH="$work/storage"

# The shipped files, with a short bot keepalive so a killed worker's job is requeued within seconds.
for name in storage execution bots; do
  sed 's/bot-session-keepalive-timeout: 600/bot-session-keepalive-timeout: 10/' "config/split/$name.yml" >"$work/$name.yml"
done

# start NAME ARGS...: `strata ARGS...` in the background, logging to NAME.log; waits for it to listen.
start() {
  local name=$1; shift
  "$strata" "$@" >>"$work/$name.log" 2>&1 &
  pid[$name]=$!
  local lines
  lines=$(grep -c 'strata listening on' "$work/$name.log" || true)
  for _ in $(seq 1 200); do
    [ "$(grep -c 'strata listening on' "$work/$name.log" || true)" -gt "${lines:-0}" ] && return 0
    kill -0 "${pid[$name]}" 2>/dev/null || fail "strata $* exited"
    sleep 0.1
  done
  fail "strata $* did not start listening"
}
# stop NAME: SIGTERM must end the process cleanly (exit status 0).
stop() {
  kill -TERM "${pid[$1]}"
  local status=0
  wait "${pid[$1]}" || status=$?
  unset "pid[$1]"
  [ "$status" -eq 0 ] || fail "$1 exited $status after SIGTERM"
}
start_worker() { # NAME
  "$strata" worker --bots-remote "grpc://$STRATA_BOTS_ADDRESS" --cas-remote "grpc://$STRATA_STORAGE_ADDRESS" \
    --platform OSFamily=linux --platform ISA=x86-64 --capacity 2 --bot-id "$1" --cache-dir "$work/$1/cache" \
    --long-poll-timeout 5 >>"$work/$1.log" 2>&1 &
  pid[$1]=$!
}

# An operator's migration, then the three processes and two workers.
"$strata" migrate "$work/execution.yml" >"$work/migrate.log" 2>&1 || fail "strata migrate"
start storage serve "$work/storage.yml"
start execution serve "$work/execution.yml"
start bots serve "$work/bots.yml"
start_worker worker-a
start_worker worker-b
for _ in $(seq 1 100); do
  [ "$(cat "$work"/worker-*.log | grep -c 'bot session .* opened' || true)" -ge 2 ] && break
  sleep 0.1
done
[ "$(cat "$work"/worker-*.log | grep -c 'bot session .* opened' || true)" -ge 2 ] || fail "the workers opened no sessions"
say "storage $STRATA_STORAGE_ADDRESS, execution $STRATA_EXECUTION_ADDRESS, bots $STRATA_BOTS_ADDRESS, two workers"

# 1 and 2: Bazel, with both stateless processes restarted during its last build's 20 s action.
BAZEL_E2E_RESTART="$work/restart" Tests/e2e/bazel-remote-execution.sh "$STRATA_EXECUTION_ADDRESS" "$STRATA_STORAGE_ADDRESS" \
  >"$work/bazel.log" 2>&1 &
bazel_pid=$!
for _ in $(seq 1 6000); do
  [ -e "$work/restart.running" ] && break
  kill -0 "$bazel_pid" 2>/dev/null || break
  sleep 0.1
done
[ -e "$work/restart.running" ] || { wait "$bazel_pid" || true; fail "the Bazel e2e did not reach its restart (see bazel.log)"; }
stop execution
stop bots
start execution serve "$work/execution.yml"
start bots serve "$work/bots.yml"
touch "$work/restart.restarted"
status=0
wait "$bazel_pid" || status=$?
bazel_pid=""
[ "$status" -eq 0 ] || fail "the Bazel e2e failed (see bazel.log)"
grep 'bazel remote execution e2e:' "$work/bazel.log" | sed 's/^/  /'

bgd_execute() { "$bgd" execute --remote "http://$STRATA_EXECUTION_ADDRESS" --remote-cas "http://$STRATA_STORAGE_ADDRESS" command "$@"; }
# running_on COMMAND_PATTERN: the worker whose child runs it, or nothing. Every worker running, the
# replacement of a killed one among them (a job may go to either).
running_on() {
  for worker in "${!pid[@]}"; do
    case "$worker" in worker-*) ;; *) continue ;; esac
    pgrep -f -P "${pid[$worker]}" "$1" >/dev/null && { echo "$worker"; return 0; }
  done
  return 0
}
mkdir -p "$work/input"
echo "input" >"$work/input/in.txt"

# 3: the worker running an action is killed; the other completes the job.
timeout 120 "$bgd" execute --remote "http://$STRATA_EXECUTION_ADDRESS" --remote-cas "http://$STRATA_STORAGE_ADDRESS" command \
  --output-file out.txt --output-directory "$work/killed-out" "$work/input" -- /bin/sh -c 'sleep 4; echo "$(cat in.txt) survived" > out.txt' \
  >"$work/bgd-killed.log" 2>&1 &
bgd_pid=$!
victim=""
for _ in $(seq 1 200); do victim=$(running_on 'sleep 4'); [ -n "$victim" ] && break; sleep 0.1; done
[ -n "$victim" ] || fail "the action did not start on a worker"
kill -KILL "${pid[$victim]}"
wait "${pid[$victim]}" 2>/dev/null || true
unset "pid[$victim]"
status=0
wait "$bgd_pid" || status=$?
[ "$status" -eq 0 ] || { cat "$work/bgd-killed.log"; fail "bgd execute failed after its worker was killed"; }
[ "$(cat "$work/killed-out/out.txt" 2>/dev/null)" = "input survived" ] || { cat "$work/bgd-killed.log"; fail "the job of the killed worker did not complete on the other"; }
say "$victim killed mid-action: the other worker completed its job"
start_worker "$victim-again"

# 4: cancel through the execution process; the command stops on its worker.
timeout 120 "$bgd" execute --remote "http://$STRATA_EXECUTION_ADDRESS" --remote-cas "http://$STRATA_STORAGE_ADDRESS" command \
  --disable-cancellation "$work/input" -- /bin/sh -c 'sleep 120' >"$work/bgd-cancel.log" 2>&1 &
bgd_pid=$!
runner=""
for _ in $(seq 1 200); do runner=$(running_on 'sleep 120'); [ -n "$runner" ] && break; sleep 0.1; done
[ -n "$runner" ] || fail "the long action did not start on a worker"
"$bgd" operation --remote "http://$STRATA_EXECUTION_ADDRESS" list >"$work/list.log" 2>&1 || fail "bgd operation list"
name=$(grep -o 'operations/[0-9a-fA-F-]*' "$work/list.log" | head -n 1)
[ -n "$name" ] || { cat "$work/list.log"; fail "the running operation is not listed"; }
"$bgd" operation --remote "http://$STRATA_EXECUTION_ADDRESS" cancel "$name" >"$work/cancel.log" 2>&1 || { cat "$work/cancel.log"; fail "bgd operation cancel"; }
for _ in $(seq 1 200); do [ -z "$(running_on 'sleep 120')" ] && break; sleep 0.1; done
[ -z "$(running_on 'sleep 120')" ] || fail "the cancelled command still runs on $runner"
for _ in $(seq 1 100); do kill -0 "$bgd_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$bgd_pid" 2>/dev/null && fail "bgd execute still waits on the cancelled operation"
wait "$bgd_pid" 2>/dev/null || true
say "a cancelled operation's command was stopped on $runner"

# 5: clean shutdowns.
for worker in "${!pid[@]}"; do
  case "$worker" in worker-*) kill -TERM "${pid[$worker]}"; wait "${pid[$worker]}" 2>/dev/null || true; unset "pid[$worker]" ;; esac
done
stop bots
stop execution
stop storage
say "OK"
