# Shared by the remote execution e2e scripts (sourced, not run). The script sets `e2e_name` (its name in
# messages), `e2e_logs` (the logs `fail` prints) and `strata` (the binary) first.

# fail MESSAGE: says what failed, prints the logs, exits 1 (the script's EXIT trap cleans up).
fail() {
  echo "$e2e_name: FAIL: $*"
  local log
  for log in "${e2e_logs[@]}"; do echo "--- $log"; cat "$log" 2>/dev/null || true; done
  exit 1
}

# start_strata_serve CONFIG LOG: `strata serve CONFIG` in the background, logging to LOG; sets
# server_pid, and address (HOST:PORT) once the server says where it listens.
start_strata_serve() {
  "$strata" serve "$1" >"$2" 2>&1 &
  server_pid=$!
  address=""
  for _ in $(seq 1 300); do
    address=$(grep -o 'strata listening on 127\.0\.0\.1:[0-9]*' "$2" | head -1 | sed 's/.* on //') || true
    [ -n "$address" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || fail "strata serve exited"
    sleep 0.1
  done
  fail "strata serve did not start"
}

# wait_for_bot_session LOG: until the `strata worker` logging to LOG has opened its session on "main".
wait_for_bot_session() {
  for _ in $(seq 1 100); do grep -q 'bot session main/bots/.* opened' "$1" && return 0; sleep 0.1; done
  fail "the worker opened no session"
}
