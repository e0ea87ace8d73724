# Shared by the remote execution e2e scripts (sourced, not run). The script sets `e2e_name` (its name in
# messages), `e2e_logs` (the logs `fail` prints), `e2e_pids` (the names of the variables holding the pids
# of what it starts, each "" while nothing runs), `scratch` (its folder) and `strata` (the binary), and
# then `trap e2e_cleanup EXIT`.

# e2e_cleanup: stops what the script started and removes its scratch folder (made writable first:
# BuildStream leaves parts of its cache read-only).
e2e_cleanup() {
  local name
  for name in "${e2e_pids[@]}"; do
    if [ -n "${!name}" ]; then kill "${!name}" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  chmod -R u+w "$scratch" 2>/dev/null || true
  rm -rf "$scratch"
}

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
