#!/usr/bin/env python3
"""zstd compressed blobs seen by a real client: grpcio with BuildGrid's generated REAPI modules, and
PyPI's `zstandard` (not libzstd through Strata's code) making and checking every frame.

    STRATA_BINARY=.build/debug/strata python3 Tests/e2e/zstd.py

For each storage (the LRU, a disk storage, and a disk storage with compression at rest when the
binary supports it): ByteStream `compressed-blobs/zstd/...` writes and reads of blobs of 0 bytes, a
few bytes and more than one chunk; identity <-> zstd cross reads; read_offset in uncompressed bytes;
read_limit refused; a resumed compressed write with QueryWriteStatus in compressed bytes; corrupt
data, another blob's frame, a bomb and trailing garbage refused with INVALID_ARGUMENT and nothing
stored; BatchUpdateBlobs and BatchReadBlobs with compressors. Starts its own `strata serve`s on free
127.0.0.1 ports in a temporary folder and stops them; about 10 s.
"""
import hashlib
import os
import shutil
import sys
import tempfile
import uuid

import grpc
import zstandard
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2 as bs
from buildgrid._protos.google.bytestream import bytestream_pb2_grpc as bs_grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
from strata_process import Server  # noqa: E402

ZSTD = re.Compressor.ZSTD
IDENTITY = re.Compressor.IDENTITY


def fail(message):
    print(f"zstd e2e: FAIL: {message}", flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def text(size, seed):
    """Compressible but not trivial: words in a pseudo-random order."""
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"epsilon ", b"zeta ", b"eta ", b"theta\n"]
    state = seed
    out = bytearray()
    while len(out) < size:
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out += words[state >> 61]
        if state & 0xFF == 0:
            out.append((state >> 24) & 0xFF)
    return bytes(out[:size])


def digest(data):
    return re.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def compress(data, level=3):
    return zstandard.ZstdCompressor(level=level).compress(data)


def decompress(frame, size):
    # max_output_size: frames of a streaming compressor carry no content size.
    return zstandard.ZstdDecompressor().decompress(frame, max_output_size=max(size, 1))


def name(d):
    return f"{d.hash}/{d.size_bytes}"


class Client:
    def __init__(self, address):
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.bytestream = bs_grpc.ByteStreamStub(self.channel)
        self.capabilities = re_grpc.CapabilitiesStub(self.channel)

    def write(self, resource, data, chunk=64 << 10, offset=0, finish=True):
        def requests():
            position = 0
            while True:
                piece = data[position:position + chunk]
                last = position + len(piece) >= len(data)
                yield bs.WriteRequest(resource_name=resource if position == 0 else "", write_offset=offset + position,
                                      data=piece, finish_write=finish and last)
                position += len(piece)
                if last:
                    return
        return self.bytestream.Write(requests(), timeout=60).committed_size

    def read(self, resource, offset=0, limit=0):
        return b"".join(r.data for r in self.bytestream.Read(
            bs.ReadRequest(resource_name=resource, read_offset=offset, read_limit=limit), timeout=60))

    def missing(self, d):
        return list(self.cas.FindMissingBlobs(re.FindMissingBlobsRequest(blob_digests=[d]), timeout=10).missing_blob_digests)


def expect_code(code, what, call):
    try:
        call()
    except grpc.RpcError as error:
        check(error.code() == code, f"{what}: {error.code()} {error.details()}, expected {code}")
        check(error.details(), f"{what}: no message with {code}")
        return error.details()
    fail(f"{what}: succeeded, expected {code}")


def exercise(client, label):
    caps = client.capabilities.GetCapabilities(re.GetCapabilitiesRequest(), timeout=10).cache_capabilities
    check(list(caps.supported_compressors) == [ZSTD], f"{label}: supported_compressors {list(caps.supported_compressors)}")
    check(list(caps.supported_batch_update_compressors) == [ZSTD], f"{label}: batch compressors")

    # Round trips of several sizes, written compressed and uncompressed, read both ways.
    for index, size in enumerate([0, 11, 200_000, (3 << 20) + 12345]):
        for written in ["zstd", "identity"]:
            data = text(size, seed=hash((label, index, written)) & 0xFFFF)
            d = digest(data)
            if written == "zstd":
                frame = compress(data)
                committed = client.write(f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{name(d)}", frame)
                check(committed in (-1, len(frame)), f"{label}: committed_size {committed} of a {len(frame)}-byte frame")
            else:
                check(client.write(f"uploads/{uuid.uuid4()}/blobs/{name(d)}", data) == size, f"{label}: identity write")
            check(client.read(f"blobs/{name(d)}") == data, f"{label}: identity read of a {written} write of {size}")
            got = client.read(f"compressed-blobs/zstd/{name(d)}")
            check(decompress(got, size) == data, f"{label}: zstd read of a {written} write of {size}")
            if size > 1000:
                check(len(got) < size // 2, f"{label}: {size} bytes read as {len(got)} compressed bytes")
                offset = size // 3 + 7
                tail = client.read(f"compressed-blobs/zstd/{name(d)}", offset=offset)
                check(decompress(tail, size - offset) == data[offset:], f"{label}: read_offset {offset} is uncompressed")
        # An existing blob: a compressed write completes early with -1.
        if size > 0:
            early = client.write(f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{name(d)}", compress(data))
            check(early in (-1, len(compress(data))), f"{label}: early completion {early}")

    data = text(500_000, seed=99)
    d = digest(data)
    client.write(f"uploads/{uuid.uuid4()}/blobs/{name(d)}", data)
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, f"{label}: read_limit on a compressed read",
                lambda: client.read(f"compressed-blobs/zstd/{name(d)}", limit=100))
    details = expect_code(grpc.StatusCode.INVALID_ARGUMENT, f"{label}: unknown compressor",
                          lambda: client.read(f"compressed-blobs/lzma/{name(d)}"))
    check("lzma" in details, f"{label}: the unknown compressor is not named: {details}")

    # Bad compressed uploads: INVALID_ARGUMENT, and nothing stored.
    data = text(300_000, seed=7)
    d = digest(data)
    frame = compress(data)
    corrupt = bytearray(frame)
    corrupt[len(corrupt) // 2] ^= 0x55
    bad = {
        "corrupt data": bytes(corrupt),
        "another blob's frame": compress(text(300_000, seed=8)),
        "a bomb (a small frame, 256 MiB out)": compress(bytes(256 << 20), level=1),
        "trailing garbage": frame + b"garbage after the frame",
        "a truncated frame": frame[:-20],
        "a frame one byte short": compress(data[:-1]),
    }
    for what, payload in bad.items():
        expect_code(grpc.StatusCode.INVALID_ARGUMENT, f"{label}: ByteStream {what}",
                    lambda: client.write(f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{name(d)}", payload))
        response = client.cas.BatchUpdateBlobs(re.BatchUpdateBlobsRequest(requests=[
            re.BatchUpdateBlobsRequest.Request(digest=d, data=payload, compressor=ZSTD)]), timeout=30)
        check(response.responses[0].status.code == 3, f"{label}: batch {what}: {response.responses[0].status}")
        check(client.missing(d) == [d], f"{label}: {what} stored something")

    # A resumed compressed write: offsets and QueryWriteStatus count compressed bytes.
    resource = f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{name(d)}"
    half = len(frame) // 2
    check(client.write(resource, frame[:half], chunk=4096, finish=False) == half, f"{label}: first half")
    status = client.bytestream.QueryWriteStatus(bs.QueryWriteStatusRequest(resource_name=resource), timeout=10)
    check(status.committed_size == half and not status.complete, f"{label}: QueryWriteStatus {status}")
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, f"{label}: resume at a wrong offset",
                lambda: client.write(resource, frame[half + 10:], offset=half + 10))
    client.write(resource, frame[half:], chunk=4096, offset=half)
    check(client.read(f"blobs/{name(d)}") == data, f"{label}: resumed compressed write")

    # Batch: per-blob compressors both ways.
    blobs = [text(n, seed=n) for n in (0, 5, 40_000)]
    response = client.cas.BatchUpdateBlobs(re.BatchUpdateBlobsRequest(requests=[
        re.BatchUpdateBlobsRequest.Request(digest=digest(b), data=compress(b), compressor=ZSTD) for b in blobs]), timeout=30)
    check([r.status.code for r in response.responses] == [0, 0, 0], f"{label}: batch update {response}")
    read = client.cas.BatchReadBlobs(re.BatchReadBlobsRequest(
        digests=[digest(b) for b in blobs], acceptable_compressors=[ZSTD]), timeout=30)
    for response, blob in zip(read.responses, blobs):
        check(response.status.code == 0, f"{label}: batch read {response.status}")
        if response.compressor == ZSTD:
            check(decompress(response.data, len(blob)) == blob, f"{label}: batch read zstd")
        else:
            check(response.compressor == IDENTITY and response.data == blob, f"{label}: batch read identity")
    plain = client.cas.BatchReadBlobs(re.BatchReadBlobsRequest(digests=[digest(b) for b in blobs]), timeout=30)
    check([(r.compressor, r.data) for r in plain.responses] == [(IDENTITY, b) for b in blobs], f"{label}: identity batch read")


def at_rest(client, root):
    """Blobs stored compressed: a zstd reader gets the stored frame as it is; a damaged one is never served."""
    data = text(1 << 20, seed=5)
    d = digest(data)
    client.write(f"uploads/{uuid.uuid4()}/blobs/{name(d)}", data)
    path = os.path.join(root, "cas", d.hash[:2], f"{d.hash}_{d.size_bytes}.zst")
    check(os.path.exists(path), "at rest: no .zst file")
    check(not os.path.exists(path[:-4]), "at rest: an uncompressed file too")
    with open(path, "rb") as f:
        stored = f.read()
    check(client.read(f"compressed-blobs/zstd/{name(d)}") == stored, "at rest: the zstd read is not the stored frame")
    check(client.read(f"blobs/{name(d)}") == data, "at rest: identity read")
    # Damage the stored frame: neither reader gets a clean end; the copy is removed.
    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 0x20
    with open(path, "wb") as f:
        f.write(bytes(damaged))
    expect_code(grpc.StatusCode.NOT_FOUND, "at rest: a damaged frame read as zstd",
                lambda: client.read(f"compressed-blobs/zstd/{name(d)}"))
    check(client.missing(d) == [d], "at rest: the damaged copy is still reported present")


CONFIGS = {
    "lru": """
storages:
  - !lru-storage &cas
    size: 1G
""",
    "disk": """
storages:
  - !disk-storage &cas
    path: {folder}/cas
""",
    "disk with zstd at rest": """
storages:
  - !disk-storage &cas
    path: {folder}/cas
    compression: zstd
""",
}


def main():
    folder = tempfile.mkdtemp(prefix="strata-zstd-e2e-")
    try:
        for label, storage in CONFIGS.items():
            workdir = os.path.join(folder, label.replace(" ", "-"))
            os.makedirs(workdir)
            config = f"""
server:
  - !channel
    address: "127.0.0.1:0"
    insecure-mode: true
{storage.format(folder=workdir)}
instances:
  - name: ""
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"""
            server = Server(config, workdir)
            try:
                server.start()
                client = Client(server.address)
                exercise(client, label)
                if label.endswith("at rest"):
                    at_rest(client, os.path.join(workdir, "cas"))
            finally:
                server.kill()
            print(f"zstd e2e: {label}: ok", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("zstd e2e: PASS", flush=True)


if __name__ == "__main__":
    main()
