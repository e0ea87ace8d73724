#!/usr/bin/env python3
"""Mutual TLS and the concurrency limit of a real `strata serve`, seen by grpcio (C-core's TLS).

Certificates are made by `openssl` here: a CA, a server certificate for 127.0.0.1, a client one.
1. `strata config check` passes the configuration, and fails naming a certificate file that is missing.
2. A client presenting its certificate round-trips a 4 MiB blob over ByteStream; a client without a
   certificate and a plaintext client are refused (UNAVAILABLE).
3. `maximum-concurrent-rpcs: 40`: 40 ByteStream Reads of a 64 MiB blob that each take one message and
   stop reading hold the server's RSS to at most 1 MiB each (TLS adds no buffering beyond the HTTP/2
   flow-control window); the 41st call gets RESOURCE_EXHAUSTED at once naming the limit; once the
   reads are cancelled, calls are served again.
4. reset_flood.py's busy honest client over mutual TLS for 5 s (30 Writes in flight, under the limit; half of blobs
   the server holds, which C-core resets after the early answer): zero failed calls. The filter that
   keeps those resets from counting as a flood reads HTTP/2 frames; before it was put behind TLS it
   read ciphertext, the resets counted, and the client got GOAWAY ENHANCE_YOUR_CALM.

    Tests/e2e/tls_grpcio.py      (needs grpcio and openssl; STRATA_BINARY, default .build/debug/strata)
"""
import os
import subprocess
import sys
import time

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
import reset_flood  # noqa: E402
import strata_process as sp  # noqa: E402

MiB = 1 << 20
LIMIT = 40


def openssl(*arguments):
    subprocess.run(["openssl", *arguments], check=True, capture_output=True)


def make_certificates(folder):
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    openssl("req", "-x509", "-subj", "/CN=Strata e2e CA", *key, "-keyout", path("ca.key"), "-out", path("ca.pem"))
    signed = ["-CA", path("ca.pem"), "-CAkey", path("ca.key"), "-addext", "basicConstraints=critical,CA:FALSE"]
    openssl("req", "-x509", "-subj", "/CN=strata-server", *key, *signed, "-keyout", path("server.key"),
            "-out", path("server.pem"), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext", "extendedKeyUsage=serverAuth")
    openssl("req", "-x509", "-subj", "/CN=e2e-client", *key, *signed, "-keyout", path("client.key"),
            "-out", path("client.pem"), "-addext", "extendedKeyUsage=clientAuth")
    return path


def config(path, server_cert):
    return f"""
maximum-concurrent-rpcs: {LIMIT}
server:
  - !channel
    address: "127.0.0.1:50051"
    insecure-mode: false
    credentials:
      tls-server-key: {path("server.key")}
      tls-server-cert: {server_cert}
      tls-client-certs: {path("ca.pem")}
storages:
  - !lru-storage &cas
    size: 512M
instances:
  - name: ""
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"""


def read(name):
    with open(name, "rb") as f:
        return f.read()


def tls_channel(address, path, client_certificate=True, **options):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(path("ca.pem")),
        private_key=read(path("client.key")) if client_certificate else None,
        certificate_chain=read(path("client.pem")) if client_certificate else None)
    return grpc.secure_channel(address, credentials, options=list(options.items()))


def find_missing(channel):
    """An empty FindMissingBlobs: None when it succeeded, else the grpc.RpcError."""
    call = channel.unary_unary("/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs",
                               request_serializer=None, response_deserializer=None)
    try:
        call(b"", timeout=60)
        return None
    except grpc.RpcError as error:
        return error


def main():
    failures = []
    with sp.temporary_directory() as work:
        path = make_certificates(work)
        config_file = os.path.join(work, "check.yml")
        with open(config_file, "w") as f:
            f.write(config(path, path("missing.pem")))
        check = subprocess.run([sp.STRATA, "config", "check", config_file], capture_output=True, text=True)
        if check.returncode != 1 or "missing.pem\" does not exist" not in check.stderr:
            failures.append(f"config check with a missing certificate: exit {check.returncode}, {check.stderr!r}")
        with open(config_file, "w") as f:
            f.write(config(path, path("server.pem")))
        check = subprocess.run([sp.STRATA, "config", "check", config_file], capture_output=True, text=True)
        if check.returncode != 0:
            failures.append(f"config check of a good TLS config: exit {check.returncode}, {check.stderr!r}")

        server = sp.Server(config(path, path("server.pem")), work).start()
        try:
            channel = tls_channel(server.address, path)
            data = os.urandom(4 * MiB)
            digest, size = sp.digest_of(data)
            if not sp.upload(channel, data) or sp.download(channel, digest, size) != data:
                failures.append("a 4 MiB blob did not round-trip over mutual TLS")
            for name, other in [("without a client certificate", tls_channel(server.address, path, False)),
                                ("in plaintext", sp.channel(server.address))]:
                error = find_missing(other)
                if error is None or error.code() != grpc.StatusCode.UNAVAILABLE:
                    failures.append(f"a client {name} was not refused: {error}")
                other.close()

            blob = os.urandom(64 * MiB)
            digest, size = sp.digest_of(blob)
            if not sp.upload(channel, blob):
                failures.append("the 64 MiB upload was not acknowledged")
            before = server.rss_bytes()
            # grpcio grows its receive window by BDP probing and then reads whole blobs into its own
            # memory whether the caller reads or not: a reader that stops must keep its window small.
            readers = tls_channel(server.address, path, **{"grpc.http2.bdp_probe": 0})
            calls = [sp.byte_stream_read(readers)(sp.read_request(digest, size), timeout=600) for _ in range(LIMIT)]
            for call in calls:
                next(call)
            time.sleep(2)  # what the server buffers for them, it has buffered by now
            grown = server.rss_bytes() - before
            print(f"tls_grpcio: {LIMIT} stalled TLS reads grew RSS by {grown / MiB:.1f} MiB")
            if grown > LIMIT * MiB:
                failures.append(f"{LIMIT} stalled TLS reads grew RSS by {grown / MiB:.1f} MiB (at most {LIMIT} MiB)")
            started = time.monotonic()
            error = find_missing(channel)
            waited = time.monotonic() - started
            if error is None or error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED \
                    or "maximum-concurrent-rpcs" not in error.details():
                failures.append(f"call {LIMIT + 1} was not refused with RESOURCE_EXHAUSTED: {error}")
            print(f"tls_grpcio: call {LIMIT + 1} answered in {waited * 1000:.0f} ms: {error and error.details()}")
            for call in calls:
                call.cancel()
            readers.close()
            served = False
            for _ in range(100):
                if find_missing(channel) is None:
                    served = True
                    break
                time.sleep(0.1)
            if not served:
                failures.append("calls were still refused 10 s after the stalled reads were cancelled")
            if not reset_flood.soak(server.address, tls_channel(server.address, path), seconds=5,
                                    label="busy client over mutual TLS", in_flight_max=LIMIT - 10):
                failures.append("the busy client's calls over mutual TLS failed")
            channel.close()
        finally:
            status = server.terminate(30)
            if status != 0:
                failures.append(f"strata exited {status} after SIGTERM:\n{server.log()[-3000:]}")

    for failure in failures:
        print(f"tls_grpcio: FAIL: {failure}")
    if failures:
        sys.exit(1)
    print("tls_grpcio: mutual TLS served and refused as configured, the concurrency limit refused at once")


if __name__ == "__main__":
    main()
