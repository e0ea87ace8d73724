#!/usr/bin/env python3
"""Every digest function Strata advertises, checked with implementations we did not write: digests
computed with Python's hashlib (SHA-256, SHA-1, SHA-384, SHA-512) and the `blake3` package from PyPI,
sent by grpcio with BuildGrid's generated REAPI messages, against `strata serve` on disk storage and a
disk action cache.

    STRATA_BINARY=.build/debug/strata python3 Tests/e2e/digest_functions.py

For every function: FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs, ByteStream Write and Read
(with the `{digest_function}/` segment where the spec requires it), GetTree, UpdateActionResult and
GetActionResult round trip; a mismatched digest is INVALID_ARGUMENT and stores nothing; the same hex
digits under SHA-256 and BLAKE3 are two blobs and two action results; an unknown or unsupported
function is INVALID_ARGUMENT naming it; Capabilities lists exactly the functions that work. Starts its
own server and stops it before it exits (a few seconds).
"""
import hashlib
import os
import sys
import tempfile
import uuid

import blake3
import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "faults"))
from strata_process import Server  # noqa: E402

DF = re_pb2.DigestFunction
FUNCTIONS = {
    DF.SHA256: lambda data: hashlib.sha256(data).hexdigest(),
    DF.SHA1: lambda data: hashlib.sha1(data).hexdigest(),
    DF.SHA384: lambda data: hashlib.sha384(data).hexdigest(),
    DF.SHA512: lambda data: hashlib.sha512(data).hexdigest(),
    DF.BLAKE3: lambda data: blake3.blake3(data).hexdigest(),
}
# The spec lets a server infer these from the hash's length: their resource names have no segment.
INFERABLE = {DF.SHA256, DF.SHA1, DF.SHA384, DF.SHA512}


def fail(message):
    print(f"digest functions e2e: FAIL: {message}", flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def name(function):
    return DF.Value.Name(function)


def digest(function, data):
    return re_pb2.Digest(hash=FUNCTIONS[function](data), size_bytes=len(data))


def blob_path(function, d):
    segment = "" if function in INFERABLE else f"{name(function).lower()}/"
    return f"{segment}{d.hash}/{d.size_bytes}"


def expect_rpc_error(code, what, call, *names):
    try:
        call()
    except grpc.RpcError as error:
        check(error.code() == code, f"{what}: {error.code()} ({error.details()}), expected {code}")
        for text in names:
            check(text in error.details(), f"{what}: the message {error.details()!r} does not name {text}")
        return
    fail(f"{what} succeeded, expected {code}")


class Client:
    def __init__(self, address):
        self.channel = grpc.insecure_channel(address)
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.ac = re_grpc.ActionCacheStub(self.channel)
        self.capabilities = re_grpc.CapabilitiesStub(self.channel)
        self.bytestream = bytestream_pb2_grpc.ByteStreamStub(self.channel)

    def missing(self, function, digests, explicit=True):
        request = re_pb2.FindMissingBlobsRequest(blob_digests=digests)
        if explicit:
            request.digest_function = function
        return {(d.hash, d.size_bytes) for d in self.cas.FindMissingBlobs(request, timeout=10).missing_blob_digests}

    def update(self, function, blobs):
        response = self.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(
            digest_function=function,
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=data) for d, data in blobs]), timeout=10)
        return [item.status.code for item in response.responses]

    def read(self, function, digests):
        response = self.cas.BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(digest_function=function, digests=digests), timeout=10)
        return [(item.status.code, item.data) for item in response.responses]

    def write_stream(self, resource, data, chunk=256 << 10):
        def requests():
            offset = 0
            while True:
                piece = data[offset:offset + chunk]
                yield bytestream_pb2.WriteRequest(
                    resource_name=resource if offset == 0 else "", write_offset=offset, data=piece,
                    finish_write=offset + len(piece) >= len(data))
                offset += len(piece)
                if offset >= len(data):
                    return
        return self.bytestream.Write(requests(), timeout=30).committed_size

    def read_stream(self, resource, offset=0, limit=0):
        return b"".join(r.data for r in self.bytestream.Read(
            bytestream_pb2.ReadRequest(resource_name=resource, read_offset=offset, read_limit=limit), timeout=30))


def round_trip(client, function):
    label = name(function)
    small = [os.urandom(100 + i) for i in range(3)]
    large = os.urandom(3 << 20)
    digests = [digest(function, data) for data in small]
    large_digest = digest(function, large)
    everything = digests + [large_digest]
    keys = {(d.hash, d.size_bytes) for d in everything}

    check(client.missing(function, everything) == keys, f"{label}: FindMissingBlobs before any upload")
    if function in INFERABLE:
        check(client.missing(function, everything, explicit=False) == keys,
              f"{label}: FindMissingBlobs inferring the function from the hash length")
    check(client.update(function, list(zip(digests, small))) == [0, 0, 0], f"{label}: BatchUpdateBlobs")
    committed = client.write_stream(f"uploads/{uuid.uuid4()}/blobs/{blob_path(function, large_digest)}", large)
    check(committed == len(large), f"{label}: ByteStream Write committed {committed} of {len(large)} bytes")
    check(client.missing(function, everything) == set(), f"{label}: FindMissingBlobs after uploads")
    if function in INFERABLE:
        check(client.missing(function, everything, explicit=False) == set(), f"{label}: FindMissingBlobs, inferred, after uploads")
    check(client.read(function, digests) == [(0, data) for data in small], f"{label}: BatchReadBlobs")
    check(client.read_stream(f"blobs/{blob_path(function, large_digest)}") == large, f"{label}: ByteStream Read")
    check(client.read_stream(f"blobs/{blob_path(function, large_digest)}", offset=1000, limit=5000) == large[1000:6000],
          f"{label}: ByteStream Read with an offset and a limit")

    # GetTree: root/{a, sub/{b}} with the function's digests.
    sub = re_pb2.Directory(files=[re_pb2.FileNode(name="b", digest=digests[1])])
    sub_data = sub.SerializeToString()
    root = re_pb2.Directory(
        files=[re_pb2.FileNode(name="a", digest=digests[0])],
        directories=[re_pb2.DirectoryNode(name="sub", digest=digest(function, sub_data))])
    root_data = root.SerializeToString()
    root_digest = digest(function, root_data)
    check(client.update(function, [(digest(function, sub_data), sub_data), (root_digest, root_data)]) == [0, 0],
          f"{label}: uploading a tree's Directory messages")
    tree = [directory for page in client.cas.GetTree(
        re_pb2.GetTreeRequest(root_digest=root_digest, digest_function=function), timeout=10) for directory in page.directories]
    check(tree == [root, sub], f"{label}: GetTree returned {len(tree)} directories, not the tree uploaded")

    # The action cache, its outputs checked for completeness with the function.
    action = digest(function, os.urandom(64))
    result = re_pb2.ActionResult(
        output_files=[re_pb2.OutputFile(path="out/a", digest=digests[0])], stdout_digest=digests[2], exit_code=0)
    client.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(action_digest=action, action_result=result, digest_function=function), timeout=10)
    got = client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=action, digest_function=function), timeout=10)
    check(got.output_files == result.output_files and got.stdout_digest == result.stdout_digest,
          f"{label}: GetActionResult answered another result")

    # A digest that does not match the bytes: refused, nothing stored.
    data = os.urandom(2000)
    wrong = digest(function, data + b"!")
    wrong.size_bytes = len(data)
    check(client.update(function, [(wrong, data)]) == [grpc.StatusCode.INVALID_ARGUMENT.value[0]],
          f"{label}: BatchUpdateBlobs of a mismatched digest")
    expect_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"{label}: ByteStream Write of a mismatched digest",
                     lambda: client.write_stream(f"uploads/{uuid.uuid4()}/blobs/{blob_path(function, wrong)}", data))
    check(client.missing(function, [wrong]) == {(wrong.hash, wrong.size_bytes)}, f"{label}: a mismatched blob was stored")
    print(f"digest functions e2e: {label}: batch, ByteStream, GetTree and the action cache round trip; mismatches refused",
          flush=True)


def same_hex_two_functions(client):
    data = os.urandom(5000)
    blake3_digest = digest(DF.BLAKE3, data)
    twin = re_pb2.Digest(hash=blake3_digest.hash, size_bytes=blake3_digest.size_bytes)
    check(client.update(DF.BLAKE3, [(blake3_digest, data)]) == [0], "uploading a BLAKE3 blob")
    check(client.missing(DF.SHA256, [twin]) == {(twin.hash, twin.size_bytes)},
          "the SHA-256 digest with a BLAKE3 blob's hex is present")
    check(client.missing(DF.SHA256, [twin], explicit=False) == {(twin.hash, twin.size_bytes)},
          "the inferred SHA-256 digest with a BLAKE3 blob's hex is present")
    check(client.read(DF.SHA256, [twin])[0][0] == grpc.StatusCode.NOT_FOUND.value[0],
          "BatchReadBlobs of the SHA-256 twin of a BLAKE3 blob")
    expect_rpc_error(grpc.StatusCode.NOT_FOUND, "ByteStream Read of the BLAKE3 hex without the blake3/ segment",
                     lambda: client.read_stream(f"blobs/{twin.hash}/{twin.size_bytes}"))
    # Without the segment, a BLAKE3 upload is taken as SHA-256, and its bytes do not match.
    expect_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "ByteStream Write of BLAKE3 bytes without the blake3/ segment",
                     lambda: client.write_stream(f"uploads/{uuid.uuid4()}/blobs/{twin.hash}/{twin.size_bytes}", data))
    check(client.read_stream(f"blobs/blake3/{blake3_digest.hash}/{blake3_digest.size_bytes}") == data,
          "ByteStream Read of a BLAKE3 blob with the blake3/ segment")

    # Two action results under the same hex: one per function.
    action_blake3 = digest(DF.BLAKE3, os.urandom(64))
    action_sha256 = re_pb2.Digest(hash=action_blake3.hash, size_bytes=action_blake3.size_bytes)
    for function, action, code in [(DF.BLAKE3, action_blake3, 3), (DF.SHA256, action_sha256, 4)]:
        client.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(
            action_digest=action, action_result=re_pb2.ActionResult(exit_code=code), digest_function=function), timeout=10)
    for function, action, code in [(DF.BLAKE3, action_blake3, 3), (DF.SHA256, action_sha256, 4)]:
        got = client.ac.GetActionResult(
            re_pb2.GetActionResultRequest(action_digest=action, digest_function=function), timeout=10)
        check(got.exit_code == code, f"{name(function)}: the action result of the same hex is the other function's")
    print("digest functions e2e: the same hex under SHA-256 and BLAKE3 is two blobs and two action results", flush=True)


def refusals(client):
    md5 = re_pb2.Digest(hash=hashlib.md5(b"x").hexdigest(), size_bytes=1)
    for function, text in [(DF.MD5, "MD5"), (DF.SHA256TREE, "SHA256TREE"), (99, "99")]:
        expect_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"FindMissingBlobs with digest_function {text}",
                         lambda: client.missing(function, [md5]), text)
    expect_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "FindMissingBlobs of an MD5-length hash, inferred",
                     lambda: client.missing(0, [md5], explicit=False), "MD5")
    expect_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "ByteStream Read with an md5/ segment",
                     lambda: client.read_stream(f"blobs/md5/{md5.hash}/1"), "MD5")
    expect_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "GetActionResult with digest_function MURMUR3",
                     lambda: client.ac.GetActionResult(re_pb2.GetActionResultRequest(
                         action_digest=md5, digest_function=DF.MURMUR3), timeout=10), "MURMUR3")
    capabilities = client.capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest(), timeout=10)
    advertised = set(capabilities.cache_capabilities.digest_functions)
    check(advertised == set(FUNCTIONS), f"Capabilities lists {sorted(map(name, advertised))}, not exactly the functions that work")
    print("digest functions e2e: unknown and unsupported functions refused by name; Capabilities lists "
          + ", ".join(sorted(map(name, advertised))), flush=True)


def main():
    with tempfile.TemporaryDirectory() as workdir:
        server = Server(f"""
server:
  - !channel
    address: "127.0.0.1:0"
    insecure-mode: true
storages:
  - !disk-storage &cas
    path: {workdir}/cas
caches:
  - !disk-action-cache &results
    path: {workdir}/ac
    storage: *cas
instances:
  - name: ""
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
      - !action-cache
        cache: *results
""", workdir).start()
        try:
            client = Client(server.address)
            for function in FUNCTIONS:
                round_trip(client, function)
            same_hex_two_functions(client)
            refusals(client)
            client.channel.close()
        except SystemExit:
            print(server.log()[-4000:], flush=True)
            raise
        finally:
            status = server.terminate(20)
        check(status == 0, f"strata serve exited {status} after SIGTERM")
        # The disk layout: SHA-256 as before, every other function in its own folder.
        cas = os.path.join(workdir, "cas", "cas")
        check(sorted(e for e in os.listdir(cas) if len(e) > 2) == ["blake3", "sha1", "sha384", "sha512"],
              f"the disk storage's function folders are {sorted(os.listdir(cas))}")
    print("digest functions e2e: passed", flush=True)


if __name__ == "__main__":
    main()
