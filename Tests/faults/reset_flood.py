#!/usr/bin/env python3
"""A busy honest C-core client passes; a rapid-reset attacker still gets GOAWAY ENHANCE_YOUR_CALM.

1. grpcio (C-core) keeps 150 ByteStream Writes in flight on one connection for SOAK_SECONDS (20),
   half of them of 3 MB blobs the server already holds: the server answers those after the first
   chunk, and C-core then resets the stream it was still sending on. Before the fix the server took
   those resets for a flood every few seconds (GOAWAY, error 11) and every call in flight failed
   UNAVAILABLE; and the 101st concurrent stream, which the server did not announce it refuses,
   closed the connection (GOAWAY, error 1). Asserts: zero failed calls.
2. A raw HTTP/2 client opens ByteStream Writes and resets each at once, in a tight loop (CVE-2023-44487):
   it must get GOAWAY with ENHANCE_YOUR_CALM, and the server must keep serving others.

    Tests/faults/reset_flood.py        (needs grpcio and h2; STRATA_BINARY, default .build/debug/strata)
"""
import os
import random
import socket
import sys
import time

import grpc
import h2.config
import h2.connection
import h2.events

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import strata_process as sp  # noqa: E402

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "20"))


def soak(address, channel=None, seconds=SOAK_SECONDS, label="honest C-core client", in_flight_max=150):
    """The busy honest client of part 1, on `channel` (by default a plaintext one to `address`)."""
    channel = channel or sp.channel(address)
    write = sp.byte_stream_write(channel)
    rng = random.Random(12)
    stored = [rng.randbytes(3_000_000) for _ in range(8)]
    for data in stored:
        assert sp.upload(channel, data), "seeding upload not acknowledged"
    ok = failed = 0
    failures = {}
    in_flight = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or in_flight:
        while time.monotonic() < end and len(in_flight) < in_flight_max:
            data = rng.choice(stored) if rng.random() < 0.5 else rng.randbytes(rng.choice([100, 5000, 60000]))
            in_flight.append((len(data), write.future(sp.write_requests(data), timeout=60)))
        size, future = in_flight.pop(0)
        try:
            if sp.committed_size(future.result()) == size:
                ok += 1
            else:
                failed += 1
                failures["short committed_size"] = failures.get("short committed_size", 0) + 1
        except grpc.RpcError as error:
            failed += 1
            key = f"{error.code()}: {error.details()}"
            failures[key] = failures.get(key, 0) + 1
    channel.close()
    print(f"reset_flood: {label}: {ok} writes acknowledged, {failed} failed in {seconds:.0f} s")
    if failed:
        for key, count in failures.items():
            print(f"  {count} x {key}")
    return failed == 0 and ok > 0


def rapid_reset(address, streams=2000, timeout=15):
    """Opens and resets `streams` streams; the GOAWAY error code the server sent, or None."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    connection.initiate_connection()
    sock.sendall(connection.data_to_send())
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/google.bytestream.ByteStream/Write"),
               (":authority", address), ("content-type", "application/grpc"), ("te", "trailers")]
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    try:
        for _ in range(streams):
            stream = connection.get_next_available_stream_id()
            connection.send_headers(stream, headers)
            connection.reset_stream(stream, error_code=8)  # CANCEL
            try:
                sock.sendall(connection.data_to_send())
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            code = _goaway(sock, connection)
            if code is not None:
                return code
        while time.monotonic() < deadline:
            code = _goaway(sock, connection)
            if code is not None:
                return code
            time.sleep(0.05)
        return None
    finally:
        sock.close()


def _goaway(sock, connection):
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return None
    except (ConnectionResetError, OSError):
        return -1
    if not data:
        return -1
    try:
        events = connection.receive_data(data)
    except Exception:  # frames h2 refuses after its own reset bookkeeping: keep reading for the GOAWAY
        return None
    for event in events:
        if isinstance(event, h2.events.ConnectionTerminated):
            return event.error_code
    return None


def main():
    with sp.temporary_directory() as work:
        server = sp.Server(sp.lru_config("512M"), work).start()
        try:
            honest = soak(server.address)
            code = rapid_reset(server.address)
            print(f"reset_flood: rapid-reset attacker got GOAWAY error code {code}")
            attacker_stopped = code == 11
            # The server still serves everyone else.
            still_serving = sp.upload(sp.channel(server.address), b"after the attack")
            status = server.terminate(60)
        finally:
            server.kill()
        if not honest:
            print("reset_flood: FAILED: the honest client's calls failed")
        if not attacker_stopped:
            print("reset_flood: FAILED: the rapid-reset attacker was not sent GOAWAY ENHANCE_YOUR_CALM (11)")
        if not still_serving:
            print("reset_flood: FAILED: the server stopped serving after the attack")
        if status != 0:
            print(f"reset_flood: FAILED: strata exited {status} after SIGTERM\n{server.log()}")
        return 0 if honest and attacker_stopped and still_serving and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
