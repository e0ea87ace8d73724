#!/usr/bin/env python3
"""Clients cannot use up the server's file descriptors, and silent sockets do not lock others out.

The server runs with an open-file limit of 256 (so at most 192 connections) and a preface timeout of
2 s. 400 raw sockets connect and never speak (before the fix: accepted until descriptors ran out,
never closed, and the server spun on accept). Asserts: the server uses little CPU meanwhile (under
half a core over 3 s: spinning is a whole one), the sockets beyond the limit are closed at once, all
are closed after the preface timeout, and then a grpcio client is served.

    Tests/faults/connection_limits.py  (needs grpcio; STRATA_BINARY, default .build/debug/strata)
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import strata_process as sp  # noqa: E402

SOCKETS = 400


def closed(sock):
    """Whether the server closed `sock` (EOF or reset); drops what it sent."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def main():
    failures = []
    with sp.temporary_directory() as work:
        server = sp.Server(sp.lru_config("64M", channel_options="preface-timeout: 2"), work, max_open_files=256).start()
        try:
            host, port = server.address.rsplit(":", 1)
            cpu_before = server.cpu_seconds()
            sockets = [socket.create_connection((host, int(port)), timeout=5) for _ in range(SOCKETS)]
            time.sleep(1)
            refused = sum(closed(s) for s in sockets)
            time.sleep(2)
            cpu = server.cpu_seconds() - cpu_before
            print(f"connection_limits: {SOCKETS} silent sockets: {refused} closed at once, server CPU {cpu:.2f} s in ~3 s")
            if cpu > 1.5:
                failures.append(f"the server used {cpu:.2f} s of CPU in about 3 s with silent sockets open (spinning?)")
            if refused < SOCKETS - 192:
                failures.append(f"only {refused} of {SOCKETS} sockets were closed at once (the limit is 192)")
            end = time.monotonic() + 20
            while time.monotonic() < end and not all(closed(s) for s in sockets):
                time.sleep(0.5)
            still_open = sum(not closed(s) for s in sockets)
            if still_open:
                failures.append(f"{still_open} silent sockets still open 20 s after the 2 s preface timeout")
            for s in sockets:
                s.close()
            served = sp.upload(sp.channel(server.address), b"after the silent sockets", timeout=10)
            print(f"connection_limits: after the preface timeout: {still_open} still open; a new client served: {served}")
            if not served:
                failures.append("a new client was not served after the silent sockets were closed")
            status = server.terminate(60)
            if status != 0:
                failures.append(f"strata exited {status} after SIGTERM")
        finally:
            server.kill()
        for failure in failures:
            print(f"connection_limits: FAILED: {failure}")
        if failures:
            print(server.log()[-3000:])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
