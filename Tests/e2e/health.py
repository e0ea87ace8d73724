#!/usr/bin/env python3
"""grpc.health.v1 of `strata serve`, asked by grpcio-health-checking (PyPI), and the monitoring
endpoint's /readyz and /healthz, with Redis stopped and restarted under a Redis-backed configuration,
and a Watch across a SIGTERM drain.

    STRATA_BINARY=.build/debug/strata python3 Tests/e2e/health.py

Starts its own redis-server (on a free 127.0.0.1 port, in a temporary folder) and `strata serve`;
stops both before it exits. Every wait is bounded; about 15 s in all.
"""
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

STRATA = os.environ.get("STRATA_BINARY", ".build/debug/strata")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = [
    "",
    "build.bazel.remote.execution.v2.Capabilities",
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "build.bazel.remote.execution.v2.ActionCache",
    "google.bytestream.ByteStream",
    "grpc.health.v1.Health",
]


def fail(message):
    print(f"health e2e: FAIL: {message}", flush=True)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(folder, port):
    subprocess.run(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--daemonize", "yes", "--pidfile", f"{folder}/redis.pid", "--logfile", f"{folder}/redis.log",
         "--dir", folder], check=True)
    wait_until(10, "redis-server to answer", lambda: subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG")


def stop_redis(port):
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "shutdown", "nosave"], capture_output=True)
    wait_until(10, "redis-server to stop", lambda: subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping"], capture_output=True).returncode != 0)


def wait_until(seconds, what, condition):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    fail(f"waited {seconds} s for {what}")


def check(stub, service):
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def http_get(port, path):
    """(status, body) of GET http://127.0.0.1:PORT/PATH; a 503 is an answer, not an error."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for_readyz(port, status, seconds, when):
    """The body of the first /readyz answering `status` within `seconds` (the backends as last checked, every 5 s)."""
    deadline = time.monotonic() + seconds
    answer = None
    while time.monotonic() < deadline:
        try:
            answer = http_get(port, "/readyz")
        except OSError as error:  # the listener not open yet
            answer = (None, str(error))
        if answer[0] == status:
            return answer[1]
        time.sleep(0.1)
    fail(f"waited {seconds} s for /readyz to answer {status} {when}; last answer {answer}")


def expect_healthz(port, when):
    status, body = http_get(port, "/healthz")
    if status != 200:
        fail(f"/healthz answered {status} {body!r} {when} instead of 200")


def main():
    folder = tempfile.mkdtemp()
    redis_port = free_port()
    monitoring_port = free_port()
    server = None
    try:
        start_redis(folder, redis_port)
        config = f"{folder}/strata.yml"
        with open(config, "w") as file:
            file.write(f"""
server:
  - !channel
    address: 127.0.0.1:0
    insecure-mode: true
connections:
  - !redis-connection &redis
    host: 127.0.0.1
    port: {redis_port}
    timeout: 1
storages:
  - !redis-index &cas
    redis: *redis
    storage: !disk-storage
      path: {folder}/cas
instances:
  - name: ""
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
      - !action-cache
        cache: !lru-action-cache
          max-cached-refs: 100
monitoring:
  endpoint-type: prometheus
  endpoint-location: 127.0.0.1:{monitoring_port}
""")
        log_path = f"{folder}/server.log"
        log = open(log_path, "w")
        server = subprocess.Popen([STRATA, "serve", config, "--log-format", "json"], stdout=log, stderr=log)
        address = None
        deadline = time.monotonic() + 30
        while address is None and time.monotonic() < deadline:
            if server.poll() is not None:
                fail(f"strata serve exited {server.returncode}: {open(log_path).read()}")
            match = re.search(r"strata listening on (127\.0\.0\.1:\d+)", open(log_path).read())
            address = match and match.group(1)
            time.sleep(0.1)
        if address is None:
            fail("strata serve did not start")

        channel = grpc.insecure_channel(address)
        stub = health_pb2_grpc.HealthStub(channel)
        # The first readiness check runs as the server starts.
        wait_until(15, "Check(\"\") to say SERVING", lambda: check(stub, "") == SERVING)
        for service in SERVICES:
            if check(stub, service) != SERVING:
                fail(f"Check({service!r}) is not SERVING with Redis up")
        try:
            check(stub, "no.such.Service")
            fail("Check of an unknown service did not fail")
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                fail(f"Check of an unknown service: {error.code()} instead of NOT_FOUND")
        print("health e2e: every service SERVING; an unknown one NOT_FOUND", flush=True)
        # The monitoring listener may open just after the gRPC one.
        body = wait_for_readyz(monitoring_port, 200, 10, "with Redis up")
        if body != "ready\n":
            fail(f"/readyz answered 200 with {body!r} instead of 'ready'")
        expect_healthz(monitoring_port, "with Redis up")
        print("health e2e: /readyz 200 and /healthz 200 with Redis up", flush=True)

        stop_redis(redis_port)
        # Asked every 5 s, each backend within 2 s.
        wait_until(20, "NOT_SERVING with Redis stopped", lambda: check(stub, "") == NOT_SERVING)
        if check(stub, "build.bazel.remote.execution.v2.ContentAddressableStorage") != NOT_SERVING:
            fail("the CAS service is not NOT_SERVING with Redis stopped")
        lines = open(log_path).read()
        if "backend not ready: !redis-connection 127.0.0.1:%d" % redis_port not in lines:
            fail(f"no warning naming the Redis connection in the log:\n{lines}")
        print("health e2e: NOT_SERVING with Redis stopped, and a warning naming it", flush=True)
        redis_backend = "!redis-connection 127.0.0.1:%d" % redis_port
        body = wait_for_readyz(monitoring_port, 503, 20, "with Redis stopped")
        if not body.startswith("not ready:\n") or redis_backend not in body:
            fail(f"/readyz's 503 does not name {redis_backend}: {body!r}")
        if "!disk-storage" in body:
            fail(f"/readyz's 503 names the disk storage, which still answers: {body!r}")
        expect_healthz(monitoring_port, "with Redis stopped")
        print(f"health e2e: /readyz 503 ({body.strip()!r}), /healthz 200, with Redis stopped", flush=True)

        start_redis(folder, redis_port)
        wait_until(20, "SERVING with Redis restarted", lambda: check(stub, "") == SERVING)
        print("health e2e: SERVING again with Redis restarted", flush=True)
        wait_for_readyz(monitoring_port, 200, 20, "with Redis restarted")
        expect_healthz(monitoring_port, "with Redis restarted")
        print("health e2e: /readyz 200 again and /healthz 200 with Redis restarted", flush=True)

        # A Watch sees SERVING, then NOT_SERVING when SIGTERM starts the drain, then its stream ends.
        updates = queue.Queue()

        def watch():
            try:
                for response in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30):
                    updates.put(response.status)
                updates.put("end")
            except grpc.RpcError as error:
                updates.put(f"error {error.code()}")

        threading.Thread(target=watch, daemon=True).start()
        first = updates.get(timeout=10)
        if first != SERVING:
            fail(f"Watch started with {first} instead of SERVING")
        server.send_signal(signal.SIGTERM)
        second = updates.get(timeout=10)
        if second != NOT_SERVING:
            fail(f"Watch got {second} after SIGTERM instead of NOT_SERVING")
        third = updates.get(timeout=10)
        if third != "end":
            fail(f"Watch did not end after NOT_SERVING on drain: {third}")
        status = server.wait(timeout=20)
        server = None
        if status != 0:
            fail(f"strata serve exited {status} after SIGTERM")
        channel.close()
        print("health e2e: a Watch saw NOT_SERVING on SIGTERM and ended; the server stopped cleanly", flush=True)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        stop_redis(redis_port)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
