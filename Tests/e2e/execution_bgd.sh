#!/usr/bin/env bash
# Remote execution driven by BuildGrid's own client: `strata serve` with CAS, action cache, Execution,
# Operations and Bots on the memory scheduler (config/execution.yml's shape, in memory), a minimal
# RWAPI bot (Tests/e2e/rwapi_bot.py, grpcio and BuildGrid's `_pb2` modules) running `/bin/sh -c`
# commands, and `bgd execute command` and `bgd operation list|status|cancel` against them:
#   - a command's output file comes back through the CAS, and `-c` makes a second run a cache hit;
#   - `bgd operation list` with BuildGrid's filter syntax, and `status` on a listed name;
#   - `bgd operation cancel` stops a running command on the bot (its process group is killed);
#   - a platform property the property set does not allow is FAILED_PRECONDITION naming it.
#
#   Tests/e2e/execution_bgd.sh [PYTHON]      (PYTHON has buildgrid==0.9.1; its bgd is next to it)
#
# Every wait is bounded; about 20 s in all. Stops what it started (by pid) before it exits.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
bgd="$(dirname "$python")/bgd"
strata=${STRATA_BINARY:-.build/debug/strata}
[ -x "$bgd" ] || { echo "execution_bgd: no bgd next to $python: install buildgrid==0.9.1"; exit 1; }

scratch=$(mktemp -d)
server_pid=""
bot_pid=""
cleanup() {
  [ -n "$bot_pid" ] && kill "$bot_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT
fail() {
  echo "execution_bgd: FAIL: $*"
  echo "--- server log"; cat "$scratch/server.log" || true
  echo "--- bot log"; cat "$scratch/bot.log" || true
  exit 1
}

cat >"$scratch/strata.yml" <<'EOF'
server: [!channel {address: "127.0.0.1:0", insecure-mode: true}]
storages: [!lru-storage &cas {size: 256M}]
caches: [!lru-action-cache &ac {storage: *cas, max-cached-refs: 1000}]
schedulers:
  - !memory-scheduler &scheduler
    storage: *cas
    action-cache: *ac
    property-set: !dynamic-property-set {match-property-keys: [OSFamily]}
instances:
  - name: main
    services:
      - !cas {storage: *cas}
      - !bytestream {storage: *cas}
      - !action-cache {cache: *ac}
      - !execution {scheduler: *scheduler}
EOF
"$strata" serve "$scratch/strata.yml" --address 127.0.0.1:0 >"$scratch/server.log" 2>&1 &
server_pid=$!
address=""
for _ in $(seq 1 300); do
  address=$(grep -o 'strata listening on 127\.0\.0\.1:[0-9]*' "$scratch/server.log" | head -1 | sed 's/.* on //') || true
  [ -n "$address" ] && break
  kill -0 "$server_pid" 2>/dev/null || fail "strata serve exited"
  sleep 0.1
done
[ -n "$address" ] || fail "strata serve did not start"
remote="http://$address"

"$python" Tests/e2e/rwapi_bot.py --remote "$address" --instance main --bot-id e2e-bot --property OSFamily=linux \
  --seconds 120 >"$scratch/bot.log" 2>&1 &
bot_pid=$!
for _ in $(seq 1 100); do grep -q '^session ' "$scratch/bot.log" && break; sleep 0.1; done
grep -q '^session main/bots/' "$scratch/bot.log" || fail "the bot opened no session"

bgd_execute() { timeout 60 "$bgd" execute --remote "$remote" --instance-name main command "$@"; }
bgd_operation() { timeout 30 "$bgd" operation --remote "$remote" --instance-name main "$@"; }

# A command with an input and an output file, cached (-c).
mkdir -p "$scratch/input"
printf 'hello\n' >"$scratch/input/in.txt"
bgd_execute -c -p OSFamily linux --output-file out.txt --output-directory "$scratch/out" "$scratch/input" -- \
  /bin/sh -c 'cat in.txt in.txt > out.txt' >"$scratch/first.txt" 2>&1 || { cat "$scratch/first.txt"; fail "the first bgd execute failed"; }
[ "$(cat "$scratch/out/out.txt" 2>/dev/null)" = "$(printf 'hello\nhello')" ] || { cat "$scratch/first.txt"; fail "out.txt is not the command's output"; }
runs=$(grep -c 'completed exit 0' "$scratch/bot.log" || true)
[ "$runs" -eq 1 ] || fail "the bot ran $runs commands, expected 1"

# The same action again: an action cache hit (bgd prints the response as bytes), the bot runs nothing.
rm -rf "$scratch/out"
bgd_execute -c -p OSFamily linux --output-file out.txt --output-directory "$scratch/out" "$scratch/input" -- \
  /bin/sh -c 'cat in.txt in.txt > out.txt' >"$scratch/second.txt" 2>&1 || { cat "$scratch/second.txt"; fail "the second bgd execute failed"; }
[ "$(cat "$scratch/out/out.txt" 2>/dev/null)" = "$(printf 'hello\nhello')" ] || fail "the cached out.txt differs"
runs=$(grep -c 'completed exit 0' "$scratch/bot.log" || true)
[ "$runs" -eq 1 ] || fail "the bot ran $runs commands after a cache hit, expected 1"

# Operations: completed ones listed with BuildGrid's filter; status of a listed name.
bgd_operation list --filter 'stage=COMPLETED & platform=OSFamily:linux' >"$scratch/list.txt" 2>&1 || { cat "$scratch/list.txt"; fail "bgd operation list failed"; }
name=$(grep -o 'main/operations/[0-9a-fA-F-]*' "$scratch/list.txt" | head -1)
[ -n "$name" ] || { cat "$scratch/list.txt"; fail "bgd operation list named no completed operation"; }
bgd_operation status "$name" >"$scratch/status.txt" 2>&1 || { cat "$scratch/status.txt"; fail "bgd operation status failed"; }
grep -q 'Completed succesfully (stage=4' "$scratch/status.txt" || { cat "$scratch/status.txt"; fail "bgd operation status does not say it completed"; }
bgd_operation list --filter 'stage=SOMEDAY' >"$scratch/bad.txt" 2>&1 || true
grep -q 'SOMEDAY' "$scratch/bad.txt" || { cat "$scratch/bad.txt"; fail "a bad filter was not refused naming its value"; }

# Cancel: a long command starts on the bot, `bgd operation cancel` kills it.
bgd_execute -p OSFamily linux --disable-cancellation "$scratch/input" -- /bin/sh -c 'sleep 60' >"$scratch/long.txt" 2>&1 &
long_pid=$!
for _ in $(seq 1 100); do grep -q "running \['/bin/sh', '-c', 'sleep 60'\]" "$scratch/bot.log" && break; sleep 0.1; done
grep -q "running \['/bin/sh', '-c', 'sleep 60'\]" "$scratch/bot.log" || fail "the long command did not start"
bgd_operation list >"$scratch/running.txt" 2>&1 || { cat "$scratch/running.txt"; fail "bgd operation list (unfinished) failed"; }
long_name=$(grep -o 'main/operations/[0-9a-fA-F-]*' "$scratch/running.txt" | head -1)
[ -n "$long_name" ] || { cat "$scratch/running.txt"; fail "the running operation is not listed"; }
bgd_operation cancel "$long_name" >"$scratch/cancel.txt" 2>&1 || { cat "$scratch/cancel.txt"; fail "bgd operation cancel failed"; }
for _ in $(seq 1 100); do grep -q 'cancelled: killed pid' "$scratch/bot.log" && break; sleep 0.1; done
grep -q 'cancelled: killed pid' "$scratch/bot.log" || fail "the cancelled command was not killed on the bot"
for _ in $(seq 1 100); do kill -0 "$long_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$long_pid" 2>/dev/null && fail "bgd execute still waits on the cancelled operation"
grep -q 'CANCELLED\|code: 1\b' "$scratch/long.txt" || { cat "$scratch/long.txt"; fail "bgd execute did not report the cancellation"; }

# A property the property set does not allow: refused, named.
bgd_execute -p colour blue "$scratch/input" -- /bin/sh -c true >"$scratch/refused.txt" 2>&1 || true
grep -q 'colour' "$scratch/refused.txt" || { cat "$scratch/refused.txt"; fail "an unknown platform property was not refused by name"; }

# A SIGTERM stops the server cleanly (the scheduler's periodic work included): exit status 0.
kill -KILL "$bot_pid" 2>/dev/null || true
wait "$bot_pid" 2>/dev/null || true
bot_pid=""
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
[ "$status" -eq 0 ] || fail "strata serve exited $status on SIGTERM"

echo "execution_bgd: bgd execute (output file, cache hit), operation list/status/cancel (command killed), a refused property, and a clean SIGTERM against strata serve"
