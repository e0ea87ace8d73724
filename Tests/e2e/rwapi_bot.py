#!/usr/bin/env python3
"""A minimal Remote Workers API bot for the e2e tests: it opens a bot session, and for each lease
(whose payload is the whole Action, as BuildGrid 0.9.1 and Strata send it) fetches the Command and
the input root from the CAS, runs the command's arguments in a temporary folder, uploads stdout,
stderr and the output files, and reports an ActionResult. A lease the server sends CANCELLED kills
its command's process group. Not a worker to use: `strata worker` is.

    python3 Tests/e2e/rwapi_bot.py --remote 127.0.0.1:PORT --instance main --bot-id bot-1 \
        [--property OSFamily=linux ...] [--capacity N]

Needs grpcio and the REAPI/RWAPI `_pb2` modules that BuildGrid's wheel ships. It prints one line per
event ("lease ID running", "lease ID completed exit N", "lease ID cancelled: killed pid P").
"""
import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import worker_pb2
from buildgrid._protos.google.rpc import status_pb2


def log(message):
    print(message, flush=True)


def digest_of(data):
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


class Runner:
    """One lease's command, on a thread of its own."""

    def __init__(self, cas, instance, lease_id, action):
        self.cas, self.instance, self.lease_id, self.action = cas, instance, lease_id, action
        self.process = None
        self.result = None
        self.cancelled = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def read(self, digests):
        if not digests:
            return {}
        response = self.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=digests), timeout=30)
        blobs = {}
        for entry in response.responses:
            if entry.status.code != 0:
                raise RuntimeError(f"cannot read {entry.digest.hash}: {entry.status.message}")
            blobs[entry.digest.hash] = entry.data
        return blobs

    def stage(self, directory_digest, path):
        directory = re_pb2.Directory.FromString(self.read([directory_digest])[directory_digest.hash])
        contents = self.read([f.digest for f in directory.files if f.digest.size_bytes > 0])
        for f in directory.files:
            target = os.path.join(path, f.name)
            with open(target, "wb") as out:
                out.write(contents.get(f.digest.hash, b""))
            if f.is_executable:
                os.chmod(target, 0o755)
        for d in directory.directories:
            os.makedirs(os.path.join(path, d.name))
            self.stage(d.digest, os.path.join(path, d.name))

    def upload(self, blobs):
        requests = [re_pb2.BatchUpdateBlobsRequest.Request(digest=digest_of(data), data=data) for data in blobs]
        if requests:
            response = self.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance, requests=requests), timeout=30)
            for entry in response.responses:
                if entry.status.code != 0:
                    raise RuntimeError(f"cannot upload {entry.digest.hash}: {entry.status.message}")

    def run(self):
        folder = tempfile.mkdtemp(prefix="rwapi-bot-")
        try:
            command = re_pb2.Command.FromString(self.read([self.action.command_digest])[self.action.command_digest.hash])
            self.stage(self.action.input_root_digest, folder)
            cwd = os.path.join(folder, command.working_directory)
            env = {v.name: v.value for v in command.environment_variables} or {"PATH": "/usr/bin:/bin"}
            log(f"lease {self.lease_id} running {list(command.arguments)}")
            self.process = subprocess.Popen(list(command.arguments), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, start_new_session=True)
            stdout, stderr = self.process.communicate()
            if self.cancelled:
                return
            result = re_pb2.ActionResult(exit_code=self.process.returncode)
            blobs = [stdout, stderr]
            result.stdout_digest.CopyFrom(digest_of(stdout))
            result.stderr_digest.CopyFrom(digest_of(stderr))
            for path in list(command.output_paths) + list(command.output_files):
                full = os.path.join(cwd, path)
                if os.path.isfile(full):
                    with open(full, "rb") as f:
                        data = f.read()
                    blobs.append(data)
                    result.output_files.add(path=path, digest=digest_of(data), is_executable=os.access(full, os.X_OK))
            self.upload(blobs)
            self.result = result
            log(f"lease {self.lease_id} completed exit {result.exit_code}")
        except Exception as error:  # reported as the lease's status
            self.result = error
            log(f"lease {self.lease_id} failed: {error}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def cancel(self):
        self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            log(f"lease {self.lease_id} cancelled: killed pid {self.process.pid}")
        else:
            log(f"lease {self.lease_id} cancelled")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--remote", required=True)
    parser.add_argument("--instance", default="")
    parser.add_argument("--bot-id", default="rwapi-bot")
    parser.add_argument("--property", action="append", default=[])
    parser.add_argument("--capacity", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=300, help="stop after this long")
    args = parser.parse_args()

    channel = grpc.insecure_channel(args.remote)
    bots = bots_pb2_grpc.BotsStub(channel)
    cas = re_grpc.ContentAddressableStorageStub(channel)
    worker = worker_pb2.Worker(
        properties=[worker_pb2.Worker.Property(key=k, value=v) for k, v in (p.split("=", 1) for p in args.property)],
        configs=[worker_pb2.Worker.Config(key="capacity", value=str(args.capacity))])
    session = bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(
        parent=args.instance, bot_session=bots_pb2.BotSession(bot_id=args.bot_id, status=bots_pb2.OK, worker=worker)), timeout=30)
    log(f"session {session.name}")
    runners = {}
    finished = set()  # leases reported COMPLETED: never started again, even if an answer was lost
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    end = time.monotonic() + args.seconds
    while not stop[0] and time.monotonic() < end:
        leases = []
        for lease in session.leases:
            if lease.id in finished:
                continue
            if lease.state == bots_pb2.LeaseState.CANCELLED:
                runner = runners.pop(lease.id, None)
                if runner is not None:
                    runner.cancel()
                continue  # acknowledged by leaving it out
            runner = runners.get(lease.id)
            if runner is None:
                action = re_pb2.Action()
                lease.payload.Unpack(action)
                runner = runners[lease.id] = Runner(cas, args.instance, lease.id, action)
            if runner.result is None:
                leases.append(bots_pb2.Lease(id=lease.id, state=bots_pb2.LeaseState.ACTIVE))
            elif isinstance(runner.result, Exception):
                leases.append(bots_pb2.Lease(id=lease.id, state=bots_pb2.LeaseState.COMPLETED,
                                             status=status_pb2.Status(code=13, message=str(runner.result))))
                del runners[lease.id]
                finished.add(lease.id)
            else:
                done = bots_pb2.Lease(id=lease.id, state=bots_pb2.LeaseState.COMPLETED, status=status_pb2.Status(code=0))
                done.result.Pack(runner.result)
                leases.append(done)
                del runners[lease.id]
                finished.add(lease.id)
        report = bots_pb2.BotSession()
        report.CopyFrom(session)
        del report.leases[:]
        report.leases.extend(leases)
        # Short polls while a command runs, so its result goes back soon after it ends.
        timeout = 1 if runners else 10
        try:
            session = bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=report), timeout=timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    session.status = bots_pb2.BOT_TERMINATING
    bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=10)
    log("terminated")


if __name__ == "__main__":
    sys.exit(main())
