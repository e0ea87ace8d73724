#!/usr/bin/env python3
"""A 4 GiB blob uploaded and downloaded as compressed-blobs/zstd grows the server's RSS by less than
64 MiB: both directions stream (decompress, hash and store a chunk at a time; read, compress and send
a chunk at a time).

    STRATA_BINARY=.build/debug/strata python3 Tests/faults/zstd_memory.py [size_in_MiB]

Uses a disk storage in a temporary folder (removed at the end) and data that compresses about 3:1
(words in a pseudo-random order, 8 MiB apart repeats, beyond zstd's window), made on the fly, never
held whole. The RSS of `strata serve` is sampled from /proc every 50 ms. About a minute on 2 cores.
"""
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid

import grpc
import zstandard
from buildgrid._protos.google.bytestream import bytestream_pb2 as bs
from buildgrid._protos.google.bytestream import bytestream_pb2_grpc as bs_grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from strata_process import Server, disk_config  # noqa: E402

MIB = 1 << 20
LIMIT = 64 * MIB


def base_block(size=8 * MIB):
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"epsilon ", b"zeta ", b"eta ", b"theta\n"]
    rng = __import__("random").Random(14)
    out = bytearray()
    while len(out) < size:
        out += words[rng.getrandbits(3)]
        if rng.getrandbits(8) == 0:
            out.append(rng.getrandbits(8))
    return bytes(out[:size])


def chunks(total, base):
    """`total` bytes, 1 MiB at a time: slices of `base` with the chunk's number in front."""
    position = 0
    index = 0
    while position < total:
        start = (index * 3 * MIB) % (len(base) - MIB)
        chunk = index.to_bytes(8, "little") + base[start:start + MIB - 8]
        chunk = chunk[:total - position]
        yield chunk
        position += len(chunk)
        index += 1


class RSSSampler(threading.Thread):
    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self.running = True

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.server.rss_bytes())
            time.sleep(0.05)

    def stop(self):
        self.running = False
        self.join()
        return self.peak


def upload(stub, resource, total, base):
    compressor = zstandard.ZstdCompressor(level=1).compressobj(size=total)
    sent = 0

    def requests():
        nonlocal sent
        pending = b""
        first = True
        for chunk in chunks(total, base):
            pending += compressor.compress(chunk)
            if len(pending) >= MIB:
                yield bs.WriteRequest(resource_name=resource if first else "", write_offset=sent, data=pending)
                first = False
                sent += len(pending)
                pending = b""
        pending += compressor.flush()
        yield bs.WriteRequest(resource_name=resource if first else "", write_offset=sent, data=pending, finish_write=True)
        sent += len(pending)

    committed = stub.Write(requests(), timeout=600).committed_size
    return committed, sent


def download(stub, resource, total):
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    sha = hashlib.sha256()
    received = size = 0
    for response in stub.Read(bs.ReadRequest(resource_name=resource), timeout=600):
        received += len(response.data)
        out = decompressor.decompress(response.data)
        sha.update(out)
        size += len(out)
    return sha.hexdigest(), size, received


def main():
    total = (int(sys.argv[1]) if len(sys.argv) > 1 else 4096) * MIB
    base = base_block()
    sha = hashlib.sha256()
    for chunk in chunks(total, base):
        sha.update(chunk)
    blob = f"{sha.hexdigest()}/{total}"

    folder = tempfile.mkdtemp(prefix="strata-zstd-memory-")
    server = Server(disk_config(os.path.join(folder, "cas")), folder)
    try:
        server.start()
        channel = grpc.insecure_channel(server.address)
        stub = bs_grpc.ByteStreamStub(channel)
        # Warm up (thread pools, allocator arenas, the disk store's folders) with a 64 MiB blob both ways.
        warm_total = 64 * MIB
        warm = hashlib.sha256()
        for chunk in chunks(warm_total, base):
            warm.update(chunk)
        warm_blob = f"{warm.hexdigest()}/{warm_total}"
        upload(stub, f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{warm_blob}", warm_total, base)
        download(stub, f"compressed-blobs/zstd/{warm_blob}", warm_total)
        time.sleep(0.5)
        baseline = server.rss_bytes()

        sampler = RSSSampler(server)
        sampler.start()
        started = time.monotonic()
        committed, sent = upload(stub, f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{blob}", total, base)
        uploaded = time.monotonic()
        digest, size, received = download(stub, f"compressed-blobs/zstd/{blob}", total)
        downloaded = time.monotonic()
        peak = sampler.stop()
        channel.close()

        print(f"zstd memory: {total // MIB} MiB up as {sent // MIB} MiB of zstd in {uploaded - started:.1f} s, "
              f"down as {received // MIB} MiB in {downloaded - uploaded:.1f} s; server RSS {baseline // MIB} MiB "
              f"at rest, peak {peak // MIB} MiB (+{(peak - baseline) / MIB:.1f} MiB)", flush=True)
        if committed != sent:
            raise SystemExit(f"zstd memory: FAIL: committed_size {committed}, sent {sent}")
        if (digest, size) != (sha.hexdigest(), total):
            raise SystemExit(f"zstd memory: FAIL: downloaded {size} bytes hashing to {digest}")
        if peak - baseline >= LIMIT:
            raise SystemExit(f"zstd memory: FAIL: RSS grew by {(peak - baseline) / MIB:.1f} MiB (limit {LIMIT // MIB})")
        print("zstd memory: PASS", flush=True)
    finally:
        server.kill()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
