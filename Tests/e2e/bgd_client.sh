#!/usr/bin/env bash
# End-to-end test: BuildGrid's `bgd` client (PyPI buildgrid==0.9.1) and `strata cas` / `strata ac` /
# `strata capabilities` against a running REAPI server.
#
# Usage: Tests/e2e/bgd_client.sh HOST:PORT
#
# The server must already be listening on HOST:PORT (instance ""); this script never starts or
# stops it and installs nothing (tools/test installs buildgrid==0.9.1 into pyenv's 3.13.0). It:
#   1. makes a tree with nested directories, an executable, symlinks (to a file, to a directory,
#      dangling), an empty file, an empty directory and a 20 MiB file;
#   2. `strata cas upload` (to a server that has none of it), then `strata cas download` into a new
#      folder: the copy must be identical (diff -r --no-dereference, and every entry's type, mode
#      and link target); `strata cas missing` finds nothing of it missing, and an unknown digest;
#   3. `bgd cas upload-dir` of the same tree must give strata's root digest, and `bgd cas
#      download-dir` of it must be identical too;
#   4. `bgd actioncache update` with an ActionResult blob, `bgd actioncache get` and `strata ac get`
#      agree; `strata ac put` of a JSON result is what `bgd actioncache get` then reads;
#   5. `bgd capabilities` and `strata capabilities` answer.
# On success the last line is: bgd e2e: OK
#
# Environment (optional): STRATA (the strata binary, default .build/debug/strata), BGD (default:
# pyenv 3.13.0's bgd); TLS_CA (a CA file: the server speaks TLS, both clients trust that CA) and
# TOKEN_FILE (a bearer token both clients send: bgd's --auth-token, strata's --token-file).
set -euo pipefail
cd "$(dirname "$0")/../.."
address=${1:?usage: Tests/e2e/bgd_client.sh HOST:PORT}
strata=${STRATA:-.build/debug/strata}
python=$(PYENV_VERSION=3.13.0 pyenv which python3)
bgd=${BGD:-$(dirname "$python")/bgd}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "bgd e2e: FAIL: $*"; exit 1; }
# How both clients reach the server: plaintext, or TLS trusting TLS_CA; with TOKEN_FILE's token.
bgd_scheme=http strata_scheme=grpc bgd_options=() strata_options=()
if [ -n "${TLS_CA:-}" ]; then
  bgd_scheme=https strata_scheme=grpcs
  bgd_options+=(--server-cert "$TLS_CA"); strata_options+=(--tls-ca "$TLS_CA")
fi
if [ -n "${TOKEN_FILE:-}" ]; then
  bgd_options+=(--auth-token "$TOKEN_FILE"); strata_options+=(--token-file "$TOKEN_FILE")
fi
# Each command bounded in time: a hung client fails the test rather than the run.
run() { timeout 120 "$@"; }

# --- 1. the tree -----------------------------------------------------------------------------
tree=$work/tree
mkdir -p "$tree/src/lib/deep" "$tree/empty-dir" "$tree/bin"
printf 'hello\n' > "$tree/README"
printf '#!/bin/sh\necho hi\n' > "$tree/bin/run.sh"
chmod 755 "$tree/bin/run.sh"
: > "$tree/src/empty"
printf 'same\n' > "$tree/src/lib/a"
printf 'same\n' > "$tree/src/lib/deep/b"
head -c $((20 << 20)) /dev/urandom > "$tree/src/large.bin"
ln -s README "$tree/link-to-readme"
ln -s lib/deep "$tree/src/link-to-dir"
ln -s ../nowhere "$tree/dangling"

# listing DIR: every entry's path, type, mode and link target, sorted.
listing() { (cd "$1" && find . -printf '%p %y %m %l\n' | sort); }
same_tree() {
  diff -r --no-dereference "$1" "$2" >/dev/null || fail "$2 differs from $1: $(diff -r --no-dereference "$1" "$2" | head -5)"
  diff <(listing "$1") <(listing "$2") >/dev/null || fail "$2's types, modes or links differ from $1: $(diff <(listing "$1") <(listing "$2") | head -5)"
}

# --- 2. strata cas (first, so that it uploads every blob) -------------------------------------
strata_root=$(run "$strata" cas upload --remote "$strata_scheme://$address" "${strata_options[@]}" "$tree" 2>"$work/strata-upload.log") \
  || { cat "$work/strata-upload.log"; fail "strata cas upload"; }
grep -q "^$tree: [1-9][0-9]* blobs uploaded" "$work/strata-upload.log" || { cat "$work/strata-upload.log"; fail "strata cas upload sent nothing"; }
run "$strata" cas download --remote "$strata_scheme://$address" "${strata_options[@]}" "$strata_root" "$work/strata-copy" 2>"$work/strata-download.log" \
  || { cat "$work/strata-download.log"; fail "strata cas download"; }
same_tree "$tree" "$work/strata-copy"
large_digest="$(sha256sum "$tree/src/large.bin" | cut -d' ' -f1)/$((20 << 20))"
run "$strata" cas download --remote "$strata_scheme://$address" "${strata_options[@]}" "$large_digest" "$work/large.bin" 2>/dev/null || fail "strata cas download of a file"
cmp -s "$tree/src/large.bin" "$work/large.bin" || fail "the downloaded 20 MiB file differs"
unknown="$(printf 'not uploaded' | sha256sum | cut -d' ' -f1)/12"
missing=$(run "$strata" cas missing --remote "$strata_scheme://$address" "${strata_options[@]}" "$strata_root" "$large_digest" "$unknown")
[ "$missing" = "$unknown" ] || fail "strata cas missing printed '$missing', expected only $unknown"
echo "bgd e2e: strata cas upload/download round trip identical ($strata_root); cas missing right"

# --- 2. bgd round trip -------------------------------------------------------------------------
bgd_cas=("$bgd" cas --remote "$bgd_scheme://$address" "${bgd_options[@]}")
run "${bgd_cas[@]}" upload-dir "$tree" > "$work/bgd-upload.log" 2>&1 || { cat "$work/bgd-upload.log"; fail "bgd cas upload-dir"; }
grep -q '^Error' "$work/bgd-upload.log" && { cat "$work/bgd-upload.log"; fail "bgd cas upload-dir reported an error"; }
# The root is the last directory pushed: the tree itself.
bgd_root=$(sed -n "s|^Success: Pushed path=\[$tree\] with digest=\[\(.*\)\]$|\1|p" "$work/bgd-upload.log" | tail -n 1)
[ -n "$bgd_root" ] || { cat "$work/bgd-upload.log"; fail "no root digest in bgd's output"; }
run "${bgd_cas[@]}" download-dir "$bgd_root" "$work/bgd-copy" > "$work/bgd-download.log" 2>&1 \
  || { cat "$work/bgd-download.log"; fail "bgd cas download-dir"; }
[ "$strata_root" = "$bgd_root" ] || fail "strata cas upload gave $strata_root, bgd $bgd_root"
same_tree "$tree" "$work/bgd-copy"
echo "bgd e2e: bgd upload-dir/download-dir round trip identical, root $bgd_root as strata cas upload's"

# --- 4. action cache ---------------------------------------------------------------------------
"$python" - "$work" <<'PY'
import sys
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
work = sys.argv[1]
result = re.ActionResult(exit_code=7, stdout_raw=b"from bgd\n")
result.output_files.add(path="out/hello", digest=re.Digest(hash="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", size_bytes=0))
open(f"{work}/result.bin", "wb").write(result.SerializeToString())
PY
action="$(printf 'action %s' "$RANDOM$RANDOM" | sha256sum | cut -d' ' -f1)/20"
result_digest="$(sha256sum "$work/result.bin" | cut -d' ' -f1)/$(stat -c %s "$work/result.bin")"
run "${bgd_cas[@]}" upload-file "$work/result.bin" > "$work/bgd-upload-file.log" 2>&1 || { cat "$work/bgd-upload-file.log"; fail "bgd cas upload-file"; }
bgd_ac=("$bgd" actioncache --remote "$bgd_scheme://$address" "${bgd_options[@]}")
run "${bgd_ac[@]}" update "$action" "$result_digest" > "$work/bgd-update.log" 2>&1 || { cat "$work/bgd-update.log"; fail "bgd actioncache update"; }
run "${bgd_ac[@]}" get --json "$action" > "$work/bgd-get.json" 2>&1 || { cat "$work/bgd-get.json"; fail "bgd actioncache get"; }
run "$strata" ac get --remote "$strata_scheme://$address" "${strata_options[@]}" "$action" > "$work/strata-get.json" || fail "strata ac get"
# The same ActionResult, whatever each tool's JSON spelling: compared as messages.
compare_results() {
  "$python" - "$@" <<'PY'
import json, sys
from google.protobuf import json_format
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
def load(path):
    text = open(path).read()
    start = text.index("{")  # bgd may print a line before its JSON
    return json_format.Parse(text[start:], re.ActionResult(), ignore_unknown_fields=True)
a, b = load(sys.argv[1]), load(sys.argv[2])
if sys.argv[3:]:
    expected = re.ActionResult()
    expected.ParseFromString(open(sys.argv[3], "rb").read())
    if a != expected: sys.exit(f"{sys.argv[1]} is not the result uploaded")
if a != b: sys.exit(f"{sys.argv[1]} and {sys.argv[2]} differ:\n{a}\n{b}")
PY
}
compare_results "$work/bgd-get.json" "$work/strata-get.json" "$work/result.bin" || fail "bgd and strata read different action results"
# strata ac put (JSON), read back by bgd.
action2="$(printf 'action %s' "$RANDOM$RANDOM-2" | sha256sum | cut -d' ' -f1)/21"
printf '{"exitCode": 3, "stderrRaw": "%s"}\n' "$(printf 'put by strata' | base64)" > "$work/put.json"
run "$strata" ac put --remote "$strata_scheme://$address" "${strata_options[@]}" "$action2" "$work/put.json" || fail "strata ac put"
run "${bgd_ac[@]}" get --json "$action2" > "$work/bgd-get2.json" 2>&1 || { cat "$work/bgd-get2.json"; fail "bgd actioncache get of strata's result"; }
compare_results "$work/bgd-get2.json" "$work/put.json" || fail "bgd read another result than strata put"
echo "bgd e2e: bgd actioncache update/get and strata ac get/put agree"

# --- 5. capabilities ---------------------------------------------------------------------------
run "$bgd" capabilities --remote "$bgd_scheme://$address" "${bgd_options[@]}" > "$work/bgd-capabilities.log" 2>&1 || { cat "$work/bgd-capabilities.log"; fail "bgd capabilities"; }
grep -qi "max_batch_total_size_bytes\|maxBatchTotalSizeBytes" "$work/bgd-capabilities.log" || { cat "$work/bgd-capabilities.log"; fail "bgd capabilities shows no cache capabilities"; }
run "$strata" capabilities --remote "$strata_scheme://$address" "${strata_options[@]}" > "$work/strata-capabilities.json" || fail "strata capabilities"
"$python" -c 'import json,sys; c=json.load(open(sys.argv[1])); assert int(c["cacheCapabilities"]["maxBatchTotalSizeBytes"]) > 0' \
  "$work/strata-capabilities.json" || fail "strata capabilities: $(cat "$work/strata-capabilities.json")"
echo "bgd e2e: bgd capabilities and strata capabilities answer"
echo "bgd e2e: OK"
