#!/usr/bin/env bash
# Regenerates Protos/strata-api.pb and Sources/StrataAPI/Generated from BuildGrid 0.9.1's wheel (and
# grpc.health.v1 from grpcio-health-checking's).
# Run by hand when the API changes; CI never runs it (it builds the protoc plugins).
#
#   tools/generate-protos.sh [PLUGIN_BIN_DIR]
#
# PLUGIN_BIN_DIR holds protoc-gen-swift and protoc-gen-grpc-swift-2, built once with
#   git clone -b 2.4.1 <grpc-swift-protobuf> gsp && cd gsp &&
#   swift build -c release --product protoc-gen-grpc-swift-2 &&
#   swift build -c release --product protoc-gen-swift
# Needs Debian's protobuf-compiler (protoc) and libprotobuf-dev (the well-known types).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
plugins=${1:-/tmp/plugins/gsp/.build/release}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --python-version 3.13 --only-binary=:all: \
  buildgrid==0.9.1 -d "$work"
# The gRPC health service (grpc.health.v1) from grpcio's own package, unpacked beside BuildGrid's.
python3 -m pip download --quiet --no-deps --python-version 3.13 --only-binary=:all: \
  grpcio-health-checking==1.85.1 -d "$work"
(cd "$work" && python3 -m zipfile -e buildgrid-0.9.1-py3-none-any.whl wheel >/dev/null)
(cd "$work" && python3 -m zipfile -e grpcio_health_checking-1.85.1-py3-none-any.whl wheel >/dev/null)

protos=(
  build/bazel/remote/execution/v2/remote_execution.proto
  build/bazel/semver/semver.proto
  google/bytestream/bytestream.proto
  google/longrunning/operations.proto
  google/rpc/status.proto
  google/rpc/code.proto
  google/rpc/error_details.proto
  google/api/annotations.proto
  google/api/http.proto
  google/devtools/remoteworkers/v1test2/bots.proto
  google/devtools/remoteworkers/v1test2/tasks.proto
  google/devtools/remoteworkers/v1test2/command.proto
  google/devtools/remoteworkers/v1test2/worker.proto
  grpc_health/v1/health.proto
)
python3 "$here/tools/extract_descriptors.py" "$work/wheel" "$work/api.pb" "${protos[@]}" > "$work/files.txt"
# Well-known types come from protoc's includes; swift-protobuf already ships their Swift code.
protoc -I/usr/include --include_imports --descriptor_set_out="$work/wkt.pb" \
  google/protobuf/any.proto google/protobuf/duration.proto google/protobuf/timestamp.proto \
  google/protobuf/wrappers.proto google/protobuf/empty.proto google/protobuf/descriptor.proto google/protobuf/field_mask.proto
cat "$work/wkt.pb" "$work/api.pb" > "$here/Protos/strata-api.pb"
cp "$work/files.txt" "$here/Protos/files.txt"

out="$here/Sources/StrataAPI/Generated"
rm -rf "$out" && mkdir -p "$out"
protoc --descriptor_set_in="$here/Protos/strata-api.pb" \
  --plugin=protoc-gen-swift="$plugins/protoc-gen-swift" \
  --plugin=protoc-gen-grpc-swift="$plugins/protoc-gen-grpc-swift-2" \
  --swift_opt=Visibility=Public,FileNaming=PathToUnderscores \
  --swift_out="$out" \
  --grpc-swift_opt=Visibility=Public,Server=true,Client=true,FileNaming=PathToUnderscores \
  --grpc-swift_out="$out" \
  $(cat "$work/files.txt")
echo "generated $(ls "$out" | wc -l) files in $out"
