#!/usr/bin/env python3
"""Stalled readers: what they hold, that it is given back, and that they cannot hold up a shutdown.

1. 300 ByteStream Reads of a 64 MiB blob (grpcio, 3 connections of 100 calls) each take one message
   and stop reading. The server's RSS (from /proc) may grow by at most 1 MiB per stalled read
   (measured: about 0.5 MiB, two 256 KiB messages).
2. The reads are cancelled and their connections closed: within 20 s RSS must come back to within
   32 MiB of what it was before them (before the fix it stayed 110 MiB above).
3. One more stalled read and a raw socket that never sent the HTTP/2 preface are open at SIGTERM: the
   server must exit 0 within its --shutdown-timeout (3 s) plus a generous 15 s (before: never).

    Tests/faults/stalled_reads.py      (needs grpcio; STRATA_BINARY, default .build/debug/strata)
"""
import os
import socket
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import strata_process as sp  # noqa: E402

MiB = 1 << 20
READERS = 300
SHUTDOWN_TIMEOUT = 3


def stalled_reads(address, digest, size, count):
    """`count` reads that took one message each and stopped, 100 per connection (the server's limit)."""
    channels = [sp.channel(address, **{"grpc.use_local_subchannel_pool": 1}) for _ in range((count + 99) // 100)]
    calls = [sp.byte_stream_read(channels[i // 100])(sp.read_request(digest, size), timeout=600) for i in range(count)]
    for call in calls:
        next(call)
    return channels, calls


def settle(read, seconds=2.0):
    """A value of `read()` once it stops moving (bounded wait)."""
    previous = read()
    end = time.monotonic() + seconds * 5
    while time.monotonic() < end:
        time.sleep(seconds)
        current = read()
        if abs(current - previous) < 4 * MiB:
            return current
        previous = current
    return previous


def main():
    failures = []
    with sp.temporary_directory() as work:
        server = sp.Server(sp.lru_config("1G"), work, extra_args=["--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]).start()
        try:
            channel = sp.channel(server.address)
            data = os.urandom(64 * MiB)
            digest, size = sp.digest_of(data)
            if not sp.upload(channel, data):
                failures.append("the 64 MiB upload was not acknowledged")
            del data
            before = settle(server.rss_bytes)

            channels, calls = stalled_reads(server.address, digest, size, READERS)
            stalled = settle(server.rss_bytes)
            per_read = (stalled - before) / READERS
            print(f"stalled_reads: RSS {before // MiB} MiB, with {READERS} stalled reads {stalled // MiB} MiB "
                  f"({per_read / 1024:.0f} KiB per read)")
            if per_read > MiB:
                failures.append(f"a stalled read holds {per_read / MiB:.2f} MiB (at most 1 MiB expected)")

            for call in calls:
                call.cancel()
            for each in channels:
                each.close()
            end = time.monotonic() + 20
            after = server.rss_bytes()
            while time.monotonic() < end and after > before + 32 * MiB:
                time.sleep(0.5)
                after = server.rss_bytes()
            print(f"stalled_reads: RSS after cancelling them {after // MiB} MiB")
            if after > before + 32 * MiB:
                failures.append(f"RSS stayed at {after // MiB} MiB after the reads were cancelled (before: {before // MiB} MiB)")

            # A shutdown with a stalled reader and a silent raw socket still ends.
            channels, calls = stalled_reads(server.address, digest, size, 1)
            host, port = server.address.rsplit(":", 1)
            silent = socket.create_connection((host, int(port)))
            started = time.monotonic()
            status = server.terminate(SHUTDOWN_TIMEOUT + 15)
            took = time.monotonic() - started
            print(f"stalled_reads: SIGTERM with a stalled read and a silent socket: exit {status} after {took:.1f} s")
            if status != 0:
                failures.append(f"strata did not exit 0 within {SHUTDOWN_TIMEOUT + 15} s of SIGTERM (status {status})")
            silent.close()
            for call in calls:
                call.cancel()
            for each in channels:
                each.close()
            channel.close()
        finally:
            server.kill()
        for failure in failures:
            print(f"stalled_reads: FAILED: {failure}")
        if failures:
            print(server.log()[-3000:])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
