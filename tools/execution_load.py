#!/usr/bin/env python3
"""Load generator for remote execution: N distinct no-op actions through a REAPI Execution service,
C in flight at once, each Execute stream followed to COMPLETED. Prints one JSON line:
{"actions": N, "seconds": S, "actions_per_second": R, "p50_ms": ..., "p99_ms": ..., "failed": F}.

    execution_load.py --executor HOST:PORT --cas HOST:PORT [--instance I] [--actions N] [--concurrency C]
                      [--command /bin/true] [--platform KEY=VALUE ...]

Each action has its own Command (an environment variable carries its number), so none is a cache hit
or joins another's job; skip_cache_lookup is set too. The Command and Action are uploaded first
(BatchUpdateBlobs), outside the timed part. Needs grpcio and BuildGrid's generated REAPI modules
(pyenv's 3.13.0 with buildgrid==0.9.1).
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import sys
import threading
import time

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc


def digest(data):
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--executor", required=True)
    parser.add_argument("--cas", required=True)
    parser.add_argument("--instance", default="")
    parser.add_argument("--actions", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--command", default="/bin/true")
    parser.add_argument("--platform", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=120, help="seconds allowed per action")
    args = parser.parse_args()

    cas_channel = grpc.insecure_channel(args.cas)
    exec_channel = cas_channel if args.cas == args.executor else grpc.insecure_channel(args.executor)
    cas = re_grpc.ContentAddressableStorageStub(cas_channel)
    execution = re_grpc.ExecutionStub(exec_channel)

    platform = re_pb2.Platform(properties=[
        re_pb2.Platform.Property(name=p.split("=", 1)[0], value=p.split("=", 1)[1]) for p in sorted(args.platform)
    ])
    empty_root = re_pb2.Directory().SerializeToString()
    run = f"{os.getpid()}-{time.time_ns()}"
    actions = []
    uploads = [(digest(empty_root), empty_root)]
    for index in range(args.actions):
        command = re_pb2.Command(
            arguments=[args.command],
            environment_variables=[re_pb2.Command.EnvironmentVariable(name="STRATA_LOAD", value=f"{run}-{index}")],
            platform=platform,
        ).SerializeToString()
        action = re_pb2.Action(command_digest=digest(command), input_root_digest=digest(empty_root), platform=platform)
        action_bytes = action.SerializeToString()
        uploads += [(digest(command), command), (digest(action_bytes), action_bytes)]
        actions.append(digest(action_bytes))
    # Upload in batches well under 4 MiB.
    for start in range(0, len(uploads), 500):
        batch = uploads[start:start + 500]
        response = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(
            instance_name=args.instance,
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=b) for d, b in batch]))
        bad = [r for r in response.responses if r.status.code != 0]
        if bad:
            sys.exit(f"execution_load: upload failed: {bad[0].status}")

    latencies = []
    failed = []
    lock = threading.Lock()

    def execute(action_digest):
        started = time.monotonic()
        request = re_pb2.ExecuteRequest(instance_name=args.instance, action_digest=action_digest, skip_cache_lookup=True)
        done = None
        for operation in execution.Execute(request, timeout=args.timeout):
            if operation.done:
                done = operation
                break
        elapsed = time.monotonic() - started
        ok = False
        if done is not None and done.HasField("response"):
            response = re_pb2.ExecuteResponse()
            done.response.Unpack(response)
            ok = response.status.code == 0 and response.result.exit_code == 0
        with lock:
            latencies.append(elapsed)
            if not ok:
                failed.append(str(done)[:300] if done is not None else "stream ended without a result")

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for future in [pool.submit(execute, d) for d in actions]:
            try:
                future.result()
            except grpc.RpcError as error:
                failed.append(f"{error.code()}: {error.details()}")
    seconds = time.monotonic() - started
    latencies.sort()

    def percentile(p):
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else None

    print(json.dumps({
        "actions": args.actions, "concurrency": args.concurrency, "seconds": round(seconds, 3),
        "actions_per_second": round(args.actions / seconds, 1), "p50_ms": percentile(0.5), "p99_ms": percentile(0.99),
        "failed": len(failed), "first_failure": failed[0] if failed else None,
    }))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
