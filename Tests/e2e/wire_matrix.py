#!/usr/bin/env python3
"""Every compressor x every digest function x every blob API, through a real gRPC client.

    STRATA_BINARY=.build/debug/strata python3 Tests/e2e/wire_matrix.py

grpcio with BuildGrid's generated REAPI messages; digests from Python's hashlib and PyPI's `blake3`,
zstd frames from PyPI's `zstandard`, chunks checked against PyPI's `pyfastcdc` (implementations Strata
did not write). One `strata serve` per storage: `!lru-storage`, `!disk-storage`, and `!disk-storage`
with `compression: zstd` at rest, each instance's `!cas` with `enable-chunking`. For each storage,
digest function (SHA-256, SHA-1, SHA-384, SHA-512, BLAKE3) and compressor (identity, zstd):

1. BatchUpdateBlobs (per-blob `compressor`) then BatchReadBlobs with and without ZSTD acceptable;
2. ByteStream Write (`blobs/` or `compressed-blobs/zstd/`, with `{digest_function}/` for BLAKE3) then
   Read both ways (a zstd read at an offset counts uncompressed bytes);
3. SplitBlob of a written blob: the chunks are pyfastcdc's and read back (zstd or not) to the blob;
   SpliceBlob of chunks uploaded with the compressor, read back through compressed ByteStream;
4. corrupt compressed data and a mismatched digest are INVALID_ARGUMENT and store nothing, through
   ByteStream and batch;
5. the same hex digits under SHA-256 and BLAKE3 are two blobs, whatever the compressor.

Starts its servers and stops them before it exits (~20 s with the debug build).
"""
import hashlib
import os
import random
import sys
import tempfile
import uuid

import blake3
import grpc
import pyfastcdc
import zstandard
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
from strata_process import Server  # noqa: E402

DF = re_pb2.DigestFunction
ZSTD = re_pb2.Compressor.ZSTD
IDENTITY = re_pb2.Compressor.IDENTITY
HASHERS = {
    DF.SHA256: lambda data: hashlib.sha256(data).hexdigest(),
    DF.SHA1: lambda data: hashlib.sha1(data).hexdigest(),
    DF.SHA384: lambda data: hashlib.sha384(data).hexdigest(),
    DF.SHA512: lambda data: hashlib.sha512(data).hexdigest(),
    DF.BLAKE3: lambda data: blake3.blake3(data).hexdigest(),
}
AVERAGE_CHUNK = 16 << 10
rng = random.Random(14)


def fail(message):
    raise AssertionError(message)


def check(condition, message):
    if not condition:
        fail(message)


def fname(function):
    return DF.Value.Name(function)


def cname(compressor):
    return re_pb2.Compressor.Value.Name(compressor)


def digest(function, data):
    return re_pb2.Digest(hash=HASHERS[function](data), size_bytes=len(data))


def blob_data(size):
    """Compressible but not trivial: random words from a small vocabulary."""
    words = [rng.randbytes(rng.randint(2, 9)) for _ in range(200)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


def reference_chunks(data):
    """pyfastcdc's cut with the spec's parameters (min average/4, max average*4, normalization 2, seed 0)."""
    chunker = pyfastcdc.FastCDC(AVERAGE_CHUNK, min_size=AVERAGE_CHUNK // 4, max_size=AVERAGE_CHUNK * 4,
                                normalized_chunking=2, seed=0)
    return [bytes(chunk.data) for chunk in chunker.cut_buf(data)]


def compress(data):
    return zstandard.ZstdCompressor(level=3).compress(data)


def decompress(frame, size):
    return zstandard.ZstdDecompressor().decompress(frame, max_output_size=max(size, 1))


def rpc_code(call):
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


class Client:
    def __init__(self, address):
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.bytestream = bytestream_pb2_grpc.ByteStreamStub(self.channel)

    def missing(self, function, digests):
        response = self.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=digests, digest_function=function), timeout=30)
        return {(d.hash, d.size_bytes) for d in response.missing_blob_digests}

    def batch_update(self, function, compressor, blobs):
        requests = [re_pb2.BatchUpdateBlobsRequest.Request(
            digest=d, data=compress(data) if compressor == ZSTD else data, compressor=compressor) for d, data in blobs]
        response = self.cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(requests=requests, digest_function=function), timeout=30)
        return [(r.status.code, r.status.message) for r in response.responses]

    def batch_read(self, function, digests, accept_zstd):
        response = self.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(
            digests=digests, digest_function=function, acceptable_compressors=[ZSTD] if accept_zstd else []), timeout=30)
        out = []
        for r, d in zip(response.responses, digests):
            check(r.status.code == 0, f"BatchReadBlobs {d.hash[:12]}: {r.status}")
            check(r.compressor in ((ZSTD, IDENTITY) if accept_zstd else (IDENTITY,)),
                  f"BatchReadBlobs answered compressor {r.compressor} (zstd acceptable: {accept_zstd})")
            out.append(decompress(r.data, d.size_bytes) if r.compressor == ZSTD else r.data)
        return out

    @staticmethod
    def path(function, compressor, d):
        segment = "blake3/" if function == DF.BLAKE3 else ""
        kind = "compressed-blobs/zstd" if compressor == ZSTD else "blobs"
        return f"{kind}/{segment}{d.hash}/{d.size_bytes}"

    def write(self, function, compressor, d, data, chunk=64 << 10):
        payload = compress(data) if compressor == ZSTD else data
        resource = f"uploads/{uuid.uuid4()}/{self.path(function, compressor, d)}"

        def requests():
            offset = 0
            while True:
                piece = payload[offset:offset + chunk]
                last = offset + len(piece) >= len(payload)
                yield bytestream_pb2.WriteRequest(
                    resource_name=resource if offset == 0 else "", write_offset=offset, data=piece, finish_write=last)
                offset += len(piece)
                if last:
                    return
        return self.bytestream.Write(requests(), timeout=60).committed_size

    def read(self, function, compressor, d, offset=0):
        resource = self.path(function, compressor, d)
        payload = b"".join(r.data for r in self.bytestream.Read(
            bytestream_pb2.ReadRequest(resource_name=resource, read_offset=offset), timeout=60))
        return decompress(payload, d.size_bytes - offset) if compressor == ZSTD else payload


def batch_round_trip(client, function, compressor):
    blobs = [blob_data(size) for size in (1, 100, 4096, 70000)]
    digests = [digest(function, b) for b in blobs]
    statuses = client.batch_update(function, compressor, list(zip(digests, blobs)))
    check(all(code == 0 for code, _ in statuses), f"BatchUpdateBlobs: {statuses}")
    check(not client.missing(function, digests), "batch-uploaded blobs are missing")
    for accept in (False, True):
        check(client.batch_read(function, digests, accept) == blobs, f"BatchReadBlobs (zstd acceptable: {accept}) differs")


def bytestream_round_trip(client, function, compressor):
    data = blob_data(300_000)
    d = digest(function, data)
    committed = client.write(function, compressor, d, data)
    expected = len(compress(data)) if compressor == ZSTD else len(data)
    check(committed in (expected, -1), f"Write committed_size {committed}, expected {expected}")
    for reader in (IDENTITY, ZSTD):
        check(client.read(function, reader, d) == data, f"a {cname(reader)} read of a {cname(compressor)} write differs")
    check(client.read(function, ZSTD, d, offset=123_456) == data[123_456:], "a zstd read at an offset differs")


def split_and_splice(client, function, compressor):
    data = blob_data(400_000)
    d = digest(function, data)
    client.write(function, compressor, d, data)
    split = client.cas.SplitBlob(re_pb2.SplitBlobRequest(blob_digest=d, digest_function=function), timeout=60)
    reference = reference_chunks(data)
    check([(c.hash, c.size_bytes) for c in split.chunk_digests] == [(digest(function, c).hash, len(c)) for c in reference],
          "SplitBlob's chunks are not pyfastcdc's")
    chunks = client.batch_read(function, list(split.chunk_digests), compressor == ZSTD)
    check(b"".join(chunks) == data, "the split chunks do not make up the blob")

    other = blob_data(300_000)
    pieces = reference_chunks(other)
    statuses = client.batch_update(function, compressor, [(digest(function, p), p) for p in pieces])
    check(all(code == 0 for code, _ in statuses), f"uploading chunks: {statuses}")
    spliced = client.cas.SpliceBlob(re_pb2.SpliceBlobRequest(
        blob_digest=digest(function, other), chunk_digests=[digest(function, p) for p in pieces],
        digest_function=function), timeout=60)
    check(spliced.blob_digest == digest(function, other), f"SpliceBlob answered {spliced.blob_digest}")
    check(client.read(function, ZSTD, digest(function, other)) == other, "the spliced blob reads back different (zstd)")


def refusals(client, function, compressor):
    data = blob_data(50_000)
    d = digest(function, data)
    wrong = digest(function, data + b"!")
    wrong.size_bytes = len(data)  # same size, another hash: a mismatch, not a size error
    if compressor == ZSTD:
        frame = bytearray(compress(data))
        frame[len(frame) // 2] ^= 0xFF
        bad = [("a corrupt frame", d, bytes(frame)), ("another blob's frame", d, compress(data[::-1]))]
    else:
        bad = [("a mismatched digest", wrong, data)]
    for what, target, payload in bad:
        resource = f"uploads/{uuid.uuid4()}/{Client.path(function, compressor, target)}"
        code, details = rpc_code(lambda: client.bytestream.Write(iter([bytestream_pb2.WriteRequest(
            resource_name=resource, write_offset=0, data=payload, finish_write=True)]), timeout=30))
        check(code == grpc.StatusCode.INVALID_ARGUMENT, f"ByteStream Write of {what}: {code} {details}")
        response = client.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=target, data=payload, compressor=compressor)],
            digest_function=function), timeout=30)
        code = response.responses[0].status.code
        check(code == grpc.StatusCode.INVALID_ARGUMENT.value[0], f"BatchUpdateBlobs of {what}: code {code}")
        check(client.missing(function, [target]), f"{what} was stored")


def same_hex_two_functions(client, compressor):
    data = blob_data(10_000)
    sha = digest(DF.SHA256, data)
    client.write(DF.SHA256, compressor, sha, data)
    as_blake3 = re_pb2.Digest(hash=sha.hash, size_bytes=sha.size_bytes)
    check(client.missing(DF.BLAKE3, [as_blake3]), "a BLAKE3 digest with a stored SHA-256 blob's hex is present")
    code, _ = rpc_code(lambda: client.read(DF.BLAKE3, compressor, as_blake3))
    check(code == grpc.StatusCode.NOT_FOUND, f"reading the SHA-256 blob's hex as BLAKE3: {code}")


def config(storage):
    return f"""
server:
  - !channel
    address: "127.0.0.1:0"
    insecure-mode: true
storages:
  - {storage}
instances:
  - name: ""
    services:
      - !cas
        storage: *cas
        enable-chunking: true
        average-chunk-size: {AVERAGE_CHUNK}
      - !bytestream
        storage: *cas
"""


def main():
    storages = {
        "lru": "!lru-storage &cas\n    size: 256M",
        "disk": "!disk-storage &cas\n    path: {folder}/cas",
        "disk, zstd at rest": "!disk-storage &cas\n    path: {folder}/cas\n    compression: zstd",
    }
    for label, storage in storages.items():
        with tempfile.TemporaryDirectory() as folder:
            server = Server(config(storage.format(folder=folder)), folder).start()
            try:
                client = Client(server.address)
                for function in HASHERS:
                    for compressor in (IDENTITY, ZSTD):
                        for step in (batch_round_trip, bytestream_round_trip, split_and_splice, refusals):
                            try:
                                step(client, function, compressor)
                            except (AssertionError, grpc.RpcError) as error:
                                fail(f"{label}, {fname(function)}, {cname(compressor)}, {step.__name__}: {error}")
                for compressor in (IDENTITY, ZSTD):
                    same_hex_two_functions(client, compressor)
                client.channel.close()
            except BaseException:
                print(server.log()[-4000:], flush=True)
                raise
            finally:
                status = server.terminate(20)
            check(status == 0, f"strata serve ({label}) exited {status} after SIGTERM")
        print(f"wire matrix: {label}: 5 digest functions x 2 compressors x batch, ByteStream, split/splice, "
              "refusals: passed", flush=True)
    print("wire matrix: passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"wire matrix: FAIL: {error}", flush=True)
        sys.exit(1)
