#!/usr/bin/env python3
"""SplitBlob and SpliceBlob of a real `strata serve`, checked with grpcio (REAPI's generated modules
from BuildGrid's wheel) against an implementation of FastCDC 2020 we did not write: PyPI's pyfastcdc
(normalized_chunking=2, as the spec fixes; it reproduces the spec's fastcdc2020_test_vectors.txt).

1. Capabilities: split_blob_support, splice_blob_support and fast_cdc_2020_params only on the
   instance whose !cas has enable-chunking; SplitBlob there answers UNIMPLEMENTED saying so.
2. SplitBlob of an 8 MiB blob: the chunks are pyfastcdc's, in order, stored, and make up the blob;
   and a split and a splice under each digest function Capabilities advertises (hashlib, blake3).
3. A client edits the blob, cuts it with pyfastcdc, uploads only the chunks the server lacks (most are
   there already: the server's and the client's cuts agree) and splices it; the blob reads back.
4. SpliceBlob refuses a wrong blob digest (INVALID_ARGUMENT, nothing stored) and a missing chunk
   (NOT_FOUND naming it).
5. Memory: splitting and splicing a 192 MiB blob (SPLIT_SPLICE_LARGE_MIB) on !disk-storage grow the
   server's RSS by less than 64 MiB (the blob is streamed, never held whole).

    Tests/e2e/split_splice.py   (pyenv's 3.13.0 with buildgrid==0.9.1 and pyfastcdc; STRATA_BINARY,
                                 default .build/debug/strata)
"""
import hashlib
import os
import random
import sys
import tempfile
import threading
import time

import grpc
import pyfastcdc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
import strata_process as sp  # noqa: E402

MiB = 1 << 20
AVERAGE = 64 << 10
# The large blob of step 5 (a larger one, e.g. 2048, for a manual run).
LARGE_MIB = int(os.environ.get("SPLIT_SPLICE_LARGE_MIB", "192"))


def fail(message):
    print(f"split/splice e2e: FAIL: {message}", flush=True)
    sys.exit(1)


def expect(condition, message):
    if not condition:
        fail(message)


def config(folder):
    return f"""
server:
  - !channel
    address: "127.0.0.1:0"
    insecure-mode: true
storages:
  - !lru-storage &memory
    size: 256M
  - !lru-storage &plain
    size: 16M
  - !disk-storage &disk
    path: {folder}/disk
  - !disk-storage &disk2
    path: {folder}/disk2
instances:
  - name: ""
    services:
      - !cas {{storage: *memory, enable-chunking: true, average-chunk-size: 64K}}
      - !bytestream {{storage: *memory}}
  - name: plain
    services:
      - !cas {{storage: *plain}}
      - !bytestream {{storage: *plain}}
  - name: disk
    services:
      - !cas {{storage: *disk, enable-chunking: true}}
      - !bytestream {{storage: *disk}}
  - name: disk2
    services:
      - !cas {{storage: *disk2, enable-chunking: true}}
      - !bytestream {{storage: *disk2}}
"""


def digest(data):
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def reference_chunks(data, average):
    """pyfastcdc's cut of `data` with the spec's parameters (min average/4, max average*4)."""
    chunker = pyfastcdc.FastCDC(average, min_size=average // 4, max_size=average * 4, normalized_chunking=2, seed=0)
    return [bytes(chunk.data) for chunk in chunker.cut_buf(data)]


def upload(bytestream, instance, data):
    d = digest(data)
    prefix = f"{instance}/" if instance else ""
    resource = f"{prefix}uploads/{random.getrandbits(64):x}/blobs/{d.hash}/{d.size_bytes}"

    def requests():
        for offset in range(0, max(len(data), 1), MiB):
            piece = data[offset:offset + MiB]
            yield bytestream_pb2.WriteRequest(
                resource_name=resource if offset == 0 else "", write_offset=offset, data=piece,
                finish_write=offset + len(piece) >= len(data))

    response = bytestream.Write(requests(), timeout=120)
    expect(response.committed_size == len(data), f"Write committed {response.committed_size} of {len(data)}")
    return d


def download(bytestream, instance, d):
    prefix = f"{instance}/" if instance else ""
    return b"".join(r.data for r in bytestream.Read(
        bytestream_pb2.ReadRequest(resource_name=f"{prefix}blobs/{d.hash}/{d.size_bytes}"), timeout=120))


def upload_missing(cas, instance, chunks):
    """Uploads the chunks FindMissingBlobs says are missing, in batches; how many were missing."""
    by_hash = {hashlib.sha256(c).hexdigest(): c for c in chunks}
    missing = cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(
        instance_name=instance, blob_digests=[digest(c) for c in chunks]), timeout=30).missing_blob_digests
    batch, size = [], 0
    for d in list(missing) + [None]:
        if d is None or size + d.size_bytes > 3 * MiB:
            if batch:
                response = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(instance_name=instance, requests=batch), timeout=60)
                expect(all(r.status.code == 0 for r in response.responses), f"BatchUpdateBlobs: {response}")
            batch, size = [], 0
        if d is not None:
            batch.append(re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=by_hash[d.hash]))
            size += d.size_bytes
    return len(missing)


# Hashers of the digest functions a server may advertise (hashlib, and PyPI's blake3 for BLAKE3).
def _blake3(data):
    import blake3
    return blake3.blake3(data)


HASHERS = {
    re_pb2.DigestFunction.SHA256: hashlib.sha256,
    re_pb2.DigestFunction.SHA1: hashlib.sha1,
    re_pb2.DigestFunction.SHA384: hashlib.sha384,
    re_pb2.DigestFunction.SHA512: hashlib.sha512,
    re_pb2.DigestFunction.BLAKE3: _blake3,
}


def round_trip_with(cas, function, rng):
    """Split and splice of 2 MiB under `function`, through the batch calls, which name the function."""
    name = re_pb2.DigestFunction.Value.Name(function)
    hasher = HASHERS.get(function)
    expect(hasher is not None, f"Capabilities advertises {name}, which this test cannot hash")

    def d(data):
        return re_pb2.Digest(hash=hasher(data).hexdigest(), size_bytes=len(data))

    def store(blobs):
        response = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=d(b), data=b) for b in blobs],
            digest_function=function), timeout=60)
        expect(all(r.status.code == 0 for r in response.responses), f"{name} BatchUpdateBlobs: {response}")

    data = rng.randbytes(2 * MiB)
    store([data])
    split = cas.SplitBlob(re_pb2.SplitBlobRequest(blob_digest=d(data), digest_function=function), timeout=60)
    expected = reference_chunks(data, AVERAGE)
    expect([(c.hash, c.size_bytes) for c in split.chunk_digests] == [(d(c).hash, len(c)) for c in expected],
           f"{name}: the server's chunks differ from pyfastcdc's")
    other = rng.randbytes(2 * MiB)
    chunks = reference_chunks(other, AVERAGE)
    store(chunks)
    spliced = cas.SpliceBlob(re_pb2.SpliceBlobRequest(
        blob_digest=d(other), chunk_digests=[d(c) for c in chunks], digest_function=function), timeout=60)
    expect(spliced.blob_digest == d(other), f"{name} SpliceBlob answered {spliced.blob_digest}")
    read = cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[d(other)], digest_function=function), timeout=60)
    expect(read.responses[0].data == other, f"{name}: the spliced blob reads back different")


def rpc_error(call):
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return None, None


class PeakRSS:
    """The server's largest RSS while the block runs, sampled every 10 ms."""

    def __init__(self, server):
        self.server = server

    def __enter__(self):
        self.start = self.server.rss_bytes()
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._sample)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.server.rss_bytes())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    @property
    def growth(self):
        return self.peak - self.start


def main():
    rng = random.Random(14)
    with tempfile.TemporaryDirectory() as folder:
        server = sp.Server(config(folder), folder).start()
        try:
            channel = grpc.insecure_channel(server.address, options=[
                ("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB)])
            cas = re_grpc.ContentAddressableStorageStub(channel)
            capabilities = re_grpc.CapabilitiesStub(channel)
            bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)

            # 1. Advertised, and served, only where enabled.
            on = capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name=""), timeout=10).cache_capabilities
            expect(on.split_blob_support and on.splice_blob_support, f"chunking not advertised: {on}")
            expect(on.HasField("fast_cdc_2020_params") and on.fast_cdc_2020_params.avg_chunk_size_bytes == AVERAGE
                   and on.fast_cdc_2020_params.seed == 0, f"fast_cdc_2020_params: {on.fast_cdc_2020_params}")
            off = capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name="plain"), timeout=10).cache_capabilities
            expect(not off.split_blob_support and not off.splice_blob_support and not off.HasField("fast_cdc_2020_params"),
                   f"plain advertises chunking: {off}")
            default = capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name="disk"), timeout=10).cache_capabilities
            expect(default.fast_cdc_2020_params.avg_chunk_size_bytes == 512 << 10, "the default average is not 512 KiB")
            code, details = rpc_error(lambda: cas.SplitBlob(re_pb2.SplitBlobRequest(
                instance_name="plain", blob_digest=digest(b"x")), timeout=10))
            expect(code == grpc.StatusCode.UNIMPLEMENTED and "chunking is off" in details, f"plain SplitBlob: {code} {details}")

            # 2. The server's chunks are pyfastcdc's.
            data = rng.randbytes(8 * MiB)
            blob = upload(bytestream, "", data)
            split = cas.SplitBlob(re_pb2.SplitBlobRequest(
                blob_digest=blob, chunking_function=re_pb2.ChunkingFunction.FAST_CDC_2020), timeout=60)
            expected = reference_chunks(data, AVERAGE)
            expect(split.chunking_function == re_pb2.ChunkingFunction.FAST_CDC_2020, "chunking_function is not FAST_CDC_2020")
            expect(len(expected) > 50, f"only {len(expected)} reference chunks")
            expect([(d.hash, d.size_bytes) for d in split.chunk_digests] == [(digest(c).hash, len(c)) for c in expected],
                   f"the server's {len(split.chunk_digests)} chunks differ from pyfastcdc's {len(expected)}")
            read = cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=split.chunk_digests[:20]), timeout=30)
            expect([r.data for r in read.responses] == expected[:20], "stored chunks differ from the reference")
            missing = cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=split.chunk_digests), timeout=30)
            expect(not missing.missing_blob_digests, f"{len(missing.missing_blob_digests)} chunks were not stored")

            # Every advertised digest function, named in the requests.
            for function in on.digest_functions:
                round_trip_with(cas, function, rng)

            # 3. Edit, cut on the client, upload what is missing, splice.
            edited = data[:3 * MiB] + rng.randbytes(1000) + data[3 * MiB + 10:]
            chunks = reference_chunks(edited, AVERAGE)
            uploaded = upload_missing(cas, "", chunks)
            expect(0 < uploaded <= 4, f"{uploaded} of {len(chunks)} chunks were missing after a 1000-byte edit")
            edited_digest = digest(edited)
            spliced = cas.SpliceBlob(re_pb2.SpliceBlobRequest(
                blob_digest=edited_digest, chunk_digests=[digest(c) for c in chunks],
                chunking_function=re_pb2.ChunkingFunction.FAST_CDC_2020), timeout=60)
            expect(spliced.blob_digest == edited_digest, f"SpliceBlob answered {spliced.blob_digest}")
            expect(download(bytestream, "", edited_digest) == edited, "the spliced blob reads back different")

            # 4. Wrong digest, missing chunk.
            wrong = digest(edited[::-1])
            code, details = rpc_error(lambda: cas.SpliceBlob(re_pb2.SpliceBlobRequest(
                blob_digest=wrong, chunk_digests=[digest(c) for c in chunks]), timeout=60))
            expect(code == grpc.StatusCode.INVALID_ARGUMENT and wrong.hash in details and edited_digest.hash in details,
                   f"mismatched splice: {code} {details}")
            still = cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[wrong]), timeout=10)
            expect(list(still.missing_blob_digests) == [wrong], "a mismatched splice stored something")
            absent = rng.randbytes(100_000)
            code, details = rpc_error(lambda: cas.SpliceBlob(re_pb2.SpliceBlobRequest(
                blob_digest=digest(chunks[0] + absent), chunk_digests=[digest(chunks[0]), digest(absent)]), timeout=60))
            expect(code == grpc.StatusCode.NOT_FOUND and digest(absent).hash in details, f"missing chunk: {code} {details}")

            # 5. Memory of a large split and splice (streamed from and to !disk-storage).
            # randbytes makes at most 2^31 bits at a time.
            big = b"".join(rng.randbytes(MiB) for _ in range(LARGE_MIB))
            big_digest = upload(bytestream, "disk", big)
            started = time.monotonic()
            with PeakRSS(server) as split_memory:
                big_split = cas.SplitBlob(re_pb2.SplitBlobRequest(instance_name="disk", blob_digest=big_digest), timeout=300)
            split_seconds = time.monotonic() - started
            big_chunks = reference_chunks(big, 512 << 10)
            expect([d.size_bytes for d in big_split.chunk_digests] == [len(c) for c in big_chunks],
                   "the large blob's chunks differ from pyfastcdc's")
            upload_missing(cas, "disk2", big_chunks)
            started = time.monotonic()
            with PeakRSS(server) as splice_memory:
                cas.SpliceBlob(re_pb2.SpliceBlobRequest(
                    instance_name="disk2", blob_digest=big_digest, chunk_digests=big_split.chunk_digests), timeout=300)
            splice_seconds = time.monotonic() - started
            expect(hashlib.sha256(download(bytestream, "disk2", big_digest)).hexdigest() == big_digest.hash,
                   "the large spliced blob reads back different")
            print(f"split/splice e2e: {LARGE_MIB} MiB ({len(big_chunks)} chunks): split {split_seconds:.1f} s, RSS +"
                  f"{split_memory.growth / MiB:.1f} MiB; splice {splice_seconds:.1f} s, RSS +{splice_memory.growth / MiB:.1f} MiB",
                  flush=True)
            expect(split_memory.growth < 64 * MiB, f"SplitBlob grew RSS by {split_memory.growth / MiB:.1f} MiB")
            expect(splice_memory.growth < 64 * MiB, f"SpliceBlob grew RSS by {splice_memory.growth / MiB:.1f} MiB")
            channel.close()
        finally:
            status = server.terminate(20)
            if status != 0:
                print(server.log())
                fail(f"strata serve exited {status} after SIGTERM")
    print("split/splice e2e: OK", flush=True)


if __name__ == "__main__":
    main()
