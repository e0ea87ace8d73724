"""Bazel's HTTP cache protocol (`!http-channel`) end to end: `strata serve` asked with Python's
http.client, curl and grpcio (REAPI messages from BuildGrid's generated `_pb2` modules).

1. Without authorization: every status code (PUT 200, GET/HEAD 200 with Content-Length, a body that
   is not its hash 400 and nothing stored, missing 404, a malformed hash 400, an unknown instance 400,
   no Content-Length 411, Content-Encoding gzip 415), zstd PUT and GET as bazel-remote has them, an instance prefix, `Expect: 100-continue`
   (curl), blobs and action results crossing HTTP -> gRPC and gRPC -> HTTP, the access log and
   Prometheus metrics of HTTP requests, and a 512 MiB PUT and GET that grow the server's RSS by less
   than 64 MiB (streamed).
2. `authorization: {method: htpasswd}` with a file made by Apache's `htpasswd` (bcrypt -B and {SHA}
   -s): 401 with WWW-Authenticate without or with wrong credentials, 200 with them, 403 for a write
   the ACL refuses; the same Basic credentials over gRPC.
3. `method: jwt`: PyJWT's tokens over HTTP (401 with a Bearer challenge without or with an expired one).
4. `insecure-mode: false` with credentials (openssl's self-signed certificate): PUT and GET over HTTPS;
   with `tls-client-certs`, a client without a certificate is refused and the certificate's subject is
   the actor an ACL judges.

    python3 Tests/e2e/http_cache.py        (STRATA_BINARY: the strata executable to test)
"""
import base64
import hashlib
import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as reapi
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as reapi_grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "faults"))
from strata_process import Server, channel, download, upload  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(storage, extra="", http_options=""):
    return f"""
server:
  - !channel
    address: "127.0.0.1:0"
  - !http-channel
    address: "127.0.0.1:0"
    {http_options}
storages:
  - {storage}
caches:
  - !lru-action-cache &results
    storage: *cas
    max-cached-refs: 1000
    allow-updates: true
instances:
  - name: ""
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
      - !action-cache
        cache: *results
  - name: team/a
    services:
      - !cas
        storage: *cas
      - !action-cache
        cache: *results
{extra}
"""


def http_port(server):
    for _ in range(200):
        found = re.findall(r"HTTP cache \(instance \"\"\) listening on http://127\.0\.0\.1:(\d+)", server.log())
        if found:
            return int(found[-1])
        time.sleep(0.05)
    raise RuntimeError(f"no HTTP cache listener:\n{server.log()}")


class Client:
    def __init__(self, port, headers=None):
        self.port = port
        self.headers = headers or {}

    def request(self, method, path, body=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(method, path, body=body, headers={**self.headers, **(headers or {})})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def action_result(outputs):
    result = reapi.ActionResult(exit_code=0)
    for path, data in outputs:
        result.output_files.add(path=path, digest=reapi.Digest(hash=sha256(data), size_bytes=len(data)))
    return result


def status_codes(server, port):
    client = Client(port)
    blob = os.urandom(5000)
    status, headers, _ = client.request("PUT", f"/cas/{sha256(blob)}", blob)
    expect(status == 200, f"PUT /cas: {status}")
    status, headers, body = client.request("GET", f"/cas/{sha256(blob)}")
    expect(status == 200 and body == blob and headers.get("Content-Length") == "5000", f"GET /cas: {status} {headers}")
    expect(headers.get("Content-Type") == "application/octet-stream", f"GET /cas Content-Type: {headers}")
    status, headers, body = client.request("HEAD", f"/cas/{sha256(blob)}")
    expect(status == 200 and headers.get("Content-Length") == "5000" and body == b"", f"HEAD /cas: {status} {headers}")

    wrong = sha256(b"another blob")
    status, _, body = client.request("PUT", f"/cas/{wrong}", blob)
    expect(status == 400 and wrong.encode() in body and sha256(blob).encode() in body, f"wrong hash: {status} {body!r}")
    stub = reapi_grpc.ContentAddressableStorageStub(channel(server.address))
    missing = stub.FindMissingBlobs(reapi.FindMissingBlobsRequest(blob_digests=[reapi.Digest(hash=wrong, size_bytes=len(blob))]))
    expect(len(missing.missing_blob_digests) == 1, "a blob whose body was not its hash was stored")

    absent = "ab" * 32
    for method, path, want in [
        ("GET", f"/cas/{absent}", 404), ("HEAD", f"/cas/{absent}", 404), ("GET", f"/ac/{absent}", 404),
        ("HEAD", f"/ac/{absent}", 404), ("GET", f"/cas/{'zz' * 32}", 400), ("GET", "/cas/abc", 400),
        ("GET", f"/nobody/cas/{absent}", 400), ("GET", f"/elsewhere/{absent}", 404),
    ]:
        status, _, body = client.request(method, path)
        expect(status == want, f"{method} {path}: {status}, expected {want}: {body!r}")

    # http.client sends no Content-Length for a generator body (chunked): the size is part of the digest.
    status, _, body = client.request("PUT", f"/cas/{sha256(blob)}", iter([blob]), {"Transfer-Encoding": "chunked"})
    expect(status == 411, f"PUT without Content-Length: {status} {body!r}")
    status, _, body = client.request("PUT", f"/cas/{sha256(blob)}", blob, {"Content-Encoding": "gzip"})
    expect(status == 415, f"PUT with Content-Encoding gzip: {status} {body!r}")

    # zstd both ways, as bazel-remote has it: PUT with Content-Encoding: zstd and the uncompressed size
    # in X-Digest-SizeBytes; GET with Accept-Encoding: zstd answers a frame (PyPI's zstandard checks it).
    import zstandard
    text = b"".join(b"line %d of a compressible blob\n" % i for i in range(20000))
    frame = zstandard.ZstdCompressor().compress(text)
    status, _, body = client.request("PUT", f"/cas/{sha256(text)}", frame, {"Content-Encoding": "zstd"})
    expect(status == 400 and b"X-Digest-SizeBytes" in body, f"zstd PUT without its size: {status} {body!r}")
    damaged = bytearray(frame)
    damaged[len(damaged) // 2] ^= 0xFF
    for bad, what in [(bytes(damaged), "a corrupt frame"), (zstandard.ZstdCompressor().compress(text[:-1] + b"?"), "another blob's frame")]:
        status, _, body = client.request("PUT", f"/cas/{sha256(text)}", bad, {"Content-Encoding": "zstd", "X-Digest-SizeBytes": str(len(text))})
        expect(status == 400, f"zstd PUT of {what}: {status} {body!r}")
        expect(client.request("GET", f"/cas/{sha256(text)}")[0] == 404, f"zstd PUT of {what} stored nothing")
    status, _, body = client.request("PUT", f"/cas/{sha256(text)}", frame, {"Content-Encoding": "zstd", "X-Digest-SizeBytes": str(len(text))})
    expect(status == 200, f"zstd PUT: {status} {body!r}")
    status, headers, body = client.request("GET", f"/cas/{sha256(text)}", None, {"Accept-Encoding": "zstd"})
    expect(status == 200 and headers.get("Content-Encoding") == "zstd", f"GET with Accept-Encoding zstd: {status} {headers}")
    expect(zstandard.ZstdDecompressor().decompress(body, max_output_size=len(text)) == text and len(body) < len(text),
           "the zstd answer decompresses to the blob")
    status, headers, body = client.request("GET", f"/cas/{sha256(text)}")
    expect(status == 200 and body == text and "Content-Encoding" not in headers, "an identity GET of the zstd upload")
    print("http_cache: zstd PUT with X-Digest-SizeBytes verified after decompression; GET answers a frame to Accept-Encoding zstd")

    # An instance prefix: the blob is stored for that instance.
    team = os.urandom(3000)
    expect(client.request("PUT", f"/team/a/cas/{sha256(team)}", team)[0] == 200, "PUT under an instance prefix")
    status, _, body = client.request("GET", f"/team/a/cas/{sha256(team)}")
    expect(status == 200 and body == team, f"GET under an instance prefix: {status}")

    # curl waits for 100 Continue before a body over 1 KiB: answered at once, not after its timer (30 s here).
    with tempfile.NamedTemporaryFile() as file:
        file.write(os.urandom(200_000))
        file.flush()
        with open(file.name, "rb") as f:
            digest = sha256(f.read())
        started = time.monotonic()
        out = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--expect100-timeout", "30",
             "-H", "Expect: 100-continue", "-T", file.name, f"http://127.0.0.1:{port}/cas/{digest}"],
            capture_output=True, text=True, timeout=60)
        expect(out.stdout == "200", f"curl PUT: {out.stdout} {out.stderr}")
        expect(time.monotonic() - started < 20, "curl waited for 100 Continue")
    print("http_cache: status codes, instance prefix and Expect: 100-continue as expected")


def cross_reads(server, port):
    client = Client(port)
    grpc_channel = channel(server.address)
    cache = reapi_grpc.ActionCacheStub(grpc_channel)

    via_http = os.urandom(3 << 20)
    expect(client.request("PUT", f"/cas/{sha256(via_http)}", via_http)[0] == 200, "PUT /cas")
    expect(download(grpc_channel, sha256(via_http), len(via_http)) == via_http, "ByteStream Read of a blob PUT over HTTP")
    via_grpc = os.urandom(3 << 20)
    expect(upload(grpc_channel, via_grpc), "ByteStream Write")
    status, _, body = client.request("GET", f"/cas/{sha256(via_grpc)}")
    expect(status == 200 and body == via_grpc, f"GET /cas of a blob written over gRPC: {status}")

    # PUT /ac over HTTP (the action's size is not sent), GetActionResult over gRPC with hash and size.
    action = reapi.Digest(hash=sha256(b"action over http"), size_bytes=142)
    result = action_result([("out", via_http)])
    expect(client.request("PUT", f"/ac/{action.hash}", result.SerializeToString())[0] == 200, "PUT /ac")
    got = cache.GetActionResult(reapi.GetActionResultRequest(action_digest=action))
    expect(got == result, "GetActionResult of a result PUT over HTTP")
    # UpdateActionResult over gRPC, GET /ac over HTTP.
    action = reapi.Digest(hash=sha256(b"action over grpc"), size_bytes=151)
    result = action_result([("out", via_grpc)])
    cache.UpdateActionResult(reapi.UpdateActionResultRequest(action_digest=action, action_result=result))
    status, _, body = client.request("GET", f"/ac/{action.hash}")
    expect(status == 200 and reapi.ActionResult.FromString(body) == result, f"GET /ac of a result from gRPC: {status}")
    # An ActionResult naming a blob that is not stored is not handed out (completeness).
    incomplete = action_result([("gone", b"never uploaded")])
    expect(client.request("PUT", f"/ac/{sha256(b'incomplete')}", incomplete.SerializeToString())[0] == 200, "PUT /ac")
    expect(client.request("GET", f"/ac/{sha256(b'incomplete')}")[0] == 404, "an incomplete result was handed out")
    expect(client.request("PUT", f"/ac/{sha256(b'garbage')}", b"\xff\xff\xff")[0] == 400, "PUT /ac of garbage")
    print("http_cache: blobs and action results cross between HTTP and gRPC")


def streaming_memory(server, port, size=512 << 20):
    """A `size`-byte PUT and GET stream through the server: its RSS grows by less than 64 MiB."""
    block = hashlib.sha256(b"strata").digest() * (1 << 15)  # 1 MiB
    hasher = hashlib.sha256()
    for _ in range(size // len(block)):
        hasher.update(block)
    digest = hasher.hexdigest()
    before = server.rss_bytes()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.putrequest("PUT", f"/cas/{digest}")
    connection.putheader("Content-Length", str(size))
    connection.endheaders()
    for _ in range(size // len(block)):
        connection.send(block)
    response = connection.getresponse()
    response.read()
    expect(response.status == 200, f"large PUT: {response.status}")
    connection.request("GET", f"/cas/{digest}")
    response = connection.getresponse()
    received = hashlib.sha256()
    total = 0
    while chunk := response.read(1 << 20):
        received.update(chunk)
        total += len(chunk)
    connection.close()
    expect(total == size and received.hexdigest() == digest, "large GET returned other bytes")
    grown = server.rss_bytes() - before
    expect(grown < 64 << 20, f"RSS grew by {grown >> 20} MiB over a {size >> 20} MiB PUT and GET")
    print(f"http_cache: a {size >> 20} MiB PUT and GET grew the server's RSS by {grown >> 20} MiB")


def logs_and_metrics(server, monitoring_port):
    log = server.log()
    expect(re.search(r"PUT /cas OK", log) and re.search(r"GET /ac NOT_FOUND", log), "no access log lines of HTTP requests")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{monitoring_port}/metrics", timeout=10).read().decode()
    expect(re.search(r'strata_rpc_requests_total\{[^}]*method="PUT /cas"', metrics), "no metrics of HTTP requests")
    expect(re.search(r'strata_action_cache_hits_total', metrics), "no action cache hits from GET /ac")
    print("http_cache: access log lines and metrics of HTTP requests")


def htpasswd(folder):
    path = f"{folder}/htpasswd"
    subprocess.run(["htpasswd", "-B", "-b", "-c", path, "alice", "wonderland"], check=True, capture_output=True)
    subprocess.run(["htpasswd", "-s", "-b", path, "bob", "builder"], check=True, capture_output=True)
    with open(f"{folder}/acl.yml", "w") as f:
        f.write('"":\n  allow:\n    - actor: alice\n    - actor: bob\n      requests: [GetActionResult, Read, FindMissingBlobs]\n'
                "team/a:\n  allow: all\n")
    return path


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def authorization(folder):
    path = htpasswd(folder)
    server = Server(config(
        "!lru-storage &cas\n    size: 64M",
        f"authorization:\n  method: htpasswd\n  htpasswd: {path}\n  acl-config: {folder}/acl.yml\n"),
        folder, log_name="htpasswd.log").start()
    try:
        port = http_port(server)
        blob = os.urandom(2000)
        target = f"/cas/{sha256(blob)}"
        status, headers, _ = Client(port).request("PUT", target, blob)
        expect(status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic "), f"anonymous PUT: {status} {headers}")
        status, _, body = Client(port, basic("alice", "wrong")).request("PUT", target, blob)
        expect(status == 401 and b"wrong user or password" in body, f"wrong password: {status} {body!r}")
        status, _, body = Client(port, basic("bob", "builder")).request("PUT", target, blob)
        expect(status == 403 and b"may not call Write" in body, f"bob's write: {status} {body!r}")
        expect(Client(port, basic("alice", "wonderland")).request("PUT", target, blob)[0] == 200, "alice's PUT (bcrypt)")
        status, _, body = Client(port, basic("bob", "builder")).request("GET", target)
        expect(status == 200 and body == blob, f"bob's GET ({{SHA}}): {status}")

        # The same credentials over gRPC.
        stub = reapi_grpc.ContentAddressableStorageStub(channel(server.address))
        request = reapi.FindMissingBlobsRequest(blob_digests=[reapi.Digest(hash=sha256(blob), size_bytes=len(blob))])
        try:
            stub.FindMissingBlobs(request)
            raise AssertionError("FindMissingBlobs without credentials succeeded")
        except grpc.RpcError as error:
            expect(error.code() == grpc.StatusCode.UNAUTHENTICATED, f"gRPC without credentials: {error.code()}")
        answer = stub.FindMissingBlobs(request, metadata=[("authorization", basic("bob", "builder")["Authorization"])])
        expect(len(answer.missing_blob_digests) == 0, "gRPC with Basic credentials")
        print("http_cache: htpasswd (bcrypt and {SHA}) over HTTP and gRPC: 401, 403 and 200 as expected")
    finally:
        server.terminate(10)


def bearer_tokens(folder):
    """`method: jwt`: the same bearer tokens as gRPC (made with PyJWT), and a Bearer challenge."""
    import jwt
    secret = "an HTTP cache e2e secret, longer than thirty-two bytes"
    with open(f"{folder}/jwt-secret", "w") as f:
        f.write(secret + "\n")
    server = Server(config(
        "!lru-storage &cas\n    size: 16M",
        f"authorization:\n  method: jwt\n  secret: {folder}/jwt-secret\n  algorithm: hs256\n"),
        folder, log_name="jwt.log").start()
    try:
        port = http_port(server)
        blob = os.urandom(1000)
        status, headers, _ = Client(port).request("PUT", f"/cas/{sha256(blob)}", blob)
        expect(status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer "), f"PUT without a token: {status} {headers}")
        token = jwt.encode({"sub": "ci", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
        expired = jwt.encode({"sub": "ci", "exp": int(time.time()) - 600}, secret, algorithm="HS256")
        status, _, body = Client(port, {"Authorization": f"Bearer {expired}"}).request("PUT", f"/cas/{sha256(blob)}", blob)
        expect(status == 401 and b"expired" in body, f"PUT with an expired token: {status} {body!r}")
        client = Client(port, {"Authorization": f"Bearer {token}"})
        expect(client.request("PUT", f"/cas/{sha256(blob)}", blob)[0] == 200, "PUT with a token")
        expect(client.request("GET", f"/cas/{sha256(blob)}")[2] == blob, "GET with a token")
        print("http_cache: JWT bearer tokens over HTTP: 401 with a Bearer challenge, 200 with a valid token")
    finally:
        server.terminate(10)


def https(folder):
    """`insecure-mode: false` with credentials: the same protocol over TLS, checked against its certificate."""
    key, certificate = f"{folder}/server.key", f"{folder}/server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", certificate], check=True, capture_output=True)
    server = Server(config(
        "!lru-storage &cas\n    size: 16M",
        http_options=f"insecure-mode: false\n    credentials:\n      tls-server-key: {key}\n      tls-server-cert: {certificate}"),
        folder, log_name="https.log").start()
    try:
        found = None
        for _ in range(200):
            found = re.findall(r"listening on https://127\.0\.0\.1:(\d+)", server.log())
            if found:
                break
            time.sleep(0.05)
        expect(found, f"no HTTPS listener:\n{server.log()}")
        context = ssl.create_default_context(cafile=certificate)
        blob = os.urandom(4000)
        for method, body, want in [("PUT", blob, 200), ("GET", None, 200)]:
            connection = http.client.HTTPSConnection("127.0.0.1", int(found[-1]), context=context, timeout=30)
            connection.request(method, f"/cas/{sha256(blob)}", body=body)
            response = connection.getresponse()
            data = response.read()
            connection.close()
            expect(response.status == want, f"{method} over HTTPS: {response.status}")
        expect(data == blob, "GET over HTTPS returned other bytes")
        print("http_cache: PUT and GET over HTTPS")

        # A renewed certificate replaced on disk (another self-signed one) is what new connections get
        # once the listener has read it again (every 10 s), without a restart.
        renewed_key, renewed = f"{folder}/renewed.key", f"{folder}/renewed.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", renewed_key, "-out", renewed], check=True, capture_output=True)
        os.replace(renewed_key, key)
        os.replace(renewed, certificate + ".new")
        os.replace(certificate + ".new", certificate)
        renewed_context = ssl.create_default_context(cafile=certificate)
        served = False
        for _ in range(300):
            try:
                connection = http.client.HTTPSConnection("127.0.0.1", int(found[-1]), context=renewed_context, timeout=30)
                connection.request("GET", f"/cas/{sha256(blob)}")
                served = connection.getresponse().status == 200
                connection.close()
            except (ssl.SSLError, ConnectionError, OSError):
                served = False
            if served:
                break
            time.sleep(0.1)
        expect(served, "the renewed certificate was not served within 30 s")
        print("http_cache: a certificate replaced on disk is served over HTTPS without a restart")
    finally:
        server.terminate(10)

    # Mutual TLS: a client certificate from the configured CA is required, and its subject is the
    # actor the ACL judges (`method: none` with `acl-config`).
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=e2e CA",
            "-keyout", f"{folder}/ca.key", "-out", f"{folder}/ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=Example/CN=builder",
            "-keyout", f"{folder}/client.key", "-out", f"{folder}/client.csr")
    openssl("x509", "-req", "-in", f"{folder}/client.csr", "-CA", f"{folder}/ca.pem", "-CAkey", f"{folder}/ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{folder}/client.pem")
    with open(f"{folder}/mtls-acl.yml", "w") as f:
        f.write('"":\n  allow:\n    - actor: "CN=builder,O=Example"\n      requests: [Read, GetActionResult, FindMissingBlobs]\n')
    server = Server(config(
        "!lru-storage &cas\n    size: 16M",
        f"authorization:\n  method: none\n  acl-config: {folder}/mtls-acl.yml\n",
        http_options=f"insecure-mode: false\n    credentials:\n      tls-server-key: {key}\n      tls-server-cert: {certificate}\n"
                     f"      tls-client-certs: {folder}/ca.pem"),
        folder, log_name="mtls.log").start()
    try:
        found = None
        for _ in range(200):
            found = re.findall(r"listening on https://127\.0\.0\.1:(\d+)", server.log())
            if found:
                break
            time.sleep(0.05)
        expect(found, f"no HTTPS listener:\n{server.log()}")
        port = int(found[-1])
        anonymous = ssl.create_default_context(cafile=certificate)
        try:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=anonymous, timeout=30)
            connection.request("GET", f"/cas/{'ab' * 32}")
            connection.getresponse().read()
            raise AssertionError("a client without a certificate was served")
        except (ssl.SSLError, ConnectionError, OSError):
            pass
        context = ssl.create_default_context(cafile=certificate)
        context.load_cert_chain(f"{folder}/client.pem", f"{folder}/client.key")
        results = {}
        for method, body in [("PUT", blob), ("GET", None)]:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
            connection.request(method, f"/cas/{sha256(blob)}", body=body)
            response = connection.getresponse()
            results[method] = (response.status, response.read())
            connection.close()
        expect(results["PUT"][0] == 403 and b"client-certificate:CN=builder,O=Example" in results["PUT"][1],
               f"mutual TLS PUT: {results['PUT']}")
        expect(results["GET"][0] == 404, f"mutual TLS GET: {results['GET']}")
        print("http_cache: mutual TLS: no certificate refused; the certificate's subject is the ACL's actor")
    finally:
        server.terminate(10)

    # The header that carries a verified subject to the handlers cannot be forged by a client.
    server = Server(config("!lru-storage &cas\n    size: 16M", f"authorization:\n  method: none\n  acl-config: {folder}/mtls-acl.yml\n"),
                    folder, log_name="forged.log").start()
    try:
        status, _, body = Client(http_port(server), {"X-Strata-Verified-Client-Certificate": "CN=builder,O=Example"}).request(
            "GET", f"/cas/{'ab' * 32}")
        expect(status == 401 and b"no client certificate" in body, f"a forged certificate header: {status} {body!r}")
    finally:
        server.terminate(10)


def main():
    with tempfile.TemporaryDirectory(prefix="strata-http-cache-") as folder:
        monitoring_port = free_port()
        server = Server(config(
            f"!disk-storage &cas\n    path: {folder}/cas",
            f"monitoring:\n  endpoint-type: prometheus\n  endpoint-location: 127.0.0.1:{monitoring_port}\n"),
            folder).start()
        try:
            port = http_port(server)
            status_codes(server, port)
            cross_reads(server, port)
            streaming_memory(server, port)
            logs_and_metrics(server, monitoring_port)
        finally:
            server.terminate(10)
        authorization(folder)
        bearer_tokens(folder)
        https(folder)
    print("http_cache: all checks passed")


if __name__ == "__main__":
    main()
