"""`authorization:` end to end: `strata serve` with JWT authorization, driven by tokens made with PyJWT
(a library Strata does not use) and calls made with grpcio.

1. HS256 with a secret file and an ACL that lets `reader` read and `writer` write: no token, a bad
   signature, an expired token and a wrong audience are UNAUTHENTICATED; the reader's writes are
   PERMISSION_DENIED, its reads succeed; Capabilities' update_enabled is false for the reader and
   true for the writer.
2. RS256 from a JWK Set served by a small HTTP server on 127.0.0.1: a token signed by the published
   key passes; one signed by another key under the same key id is UNAUTHENTICATED (bad signature);
   a key published after the server started is picked up on its first token (unknown key id).

    python3 Tests/e2e/authorization.py        (STRATA_BINARY: the strata executable to test)
"""
import http.server
import json
import os
import sys
import tempfile
import threading
import time

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "faults"))
from strata_process import Server, _field, _fields, channel  # noqa: E402

AUDIENCE = "strata"
SECRET = "an e2e shared secret, longer than thirty-two bytes"
READS = ["GetCapabilities", "FindMissingBlobs", "BatchReadBlobs", "Read", "GetActionResult"]


def config(authorization):
    return f"""
server:
  - !channel
    address: "127.0.0.1:0"
    insecure-mode: true
storages:
  - !lru-storage &cas
    size: 16M
caches:
  - !lru-action-cache &results
    storage: *cas
    max-cached-refs: 100
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
authorization:
{authorization}
"""


# --- REAPI messages, by hand (protobuf's wire format) --------------------------------------------
def call(ch, method, request, token=None):
    metadata = [("authorization", f"Bearer {token}")] if token else None
    return ch.unary_unary(method, request_serializer=None, response_deserializer=None)(
        request, metadata=metadata, timeout=10)


def find_missing(ch, token=None):
    return call(ch, "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs", b"", token)


def update_action_result(ch, token=None):
    digest = _field(1, 2, b"a" * 64) + _field(2, 0, 1)
    result = _field(4, 0, 1)  # exit_code 1
    return call(ch, "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult",
                _field(2, 2, digest) + _field(3, 2, result), token)


def update_enabled(ch, token):
    response = call(ch, "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities", b"", token)
    for number, cache in _fields(response):
        if number == 1:
            for inner, update in _fields(cache):
                if inner == 2:
                    return any(n == 1 and v == 1 for n, v in _fields(update))
    return False


def expect_status(code, fragment, function, *args):
    try:
        function(*args)
    except grpc.RpcError as error:
        if error.code() != code or fragment not in (error.details() or ""):
            raise AssertionError(f"expected {code} with {fragment!r}, got {error.code()}: {error.details()}")
        print(f"  {code.name}: {error.details()}")
        return
    raise AssertionError(f"expected {code} with {fragment!r}, the call succeeded")


def hs256(sub, secret=SECRET, audience=AUDIENCE, expires_in=3600):
    return jwt.encode({"sub": sub, "aud": audience, "exp": int(time.time()) + expires_in}, secret, algorithm="HS256")


def part_hs256(work):
    with open(os.path.join(work, "secret"), "w") as f:
        f.write(SECRET + "\n")
    with open(os.path.join(work, "acl.yml"), "w") as f:
        f.write(f'"":\n  allow:\n    - actor: reader\n      requests: {json.dumps(READS)}\n    - actor: writer\n')
    server = Server(config(f"""  method: jwt
  secret: {work}/secret
  algorithm: hs256
  audience: {AUDIENCE}
  acl-config: {work}/acl.yml
"""), work, log_name="hs256.log").start()
    try:
        with channel(server.address) as ch:
            print("HS256 secret:")
            expect_status(grpc.StatusCode.UNAUTHENTICATED, "no token", find_missing, ch)
            expect_status(grpc.StatusCode.UNAUTHENTICATED, "bad signature", find_missing, ch,
                          hs256("reader", secret="not the server's secret but just as long as it"))
            expect_status(grpc.StatusCode.UNAUTHENTICATED, "expired", find_missing, ch, hs256("reader", expires_in=-60))
            expect_status(grpc.StatusCode.UNAUTHENTICATED, "wrong audience", find_missing, ch,
                          hs256("reader", audience="somebody-else"))
            reader, writer = hs256("reader"), hs256("writer")
            find_missing(ch, reader)
            expect_status(grpc.StatusCode.PERMISSION_DENIED, "UpdateActionResult", update_action_result, ch, reader)
            update_action_result(ch, writer)
            assert update_enabled(ch, reader) is False, "update_enabled for the reader"
            assert update_enabled(ch, writer) is True, "update_enabled for the writer"
            print("  reader: reads pass, UpdateActionResult PERMISSION_DENIED, update_enabled false; writer: writes, update_enabled true")
    finally:
        assert server.terminate(30) == 0, server.log()


class JWKS:
    """A JWK Set on 127.0.0.1, counting its fetches."""

    def __init__(self):
        self.keys = []
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, kid, private_key):
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
        self.keys.append({**public, "kid": kid, "alg": "RS256", "use": "sig"})


def rs256(private_key, kid, sub="writer"):
    claims = {"sub": sub, "aud": AUDIENCE, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": kid})


def part_jwks(work):
    first, second, impostor = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3))
    jwks = JWKS()
    jwks.publish("first", first)
    server = Server(config(f"""  method: jwt
  jwks-url: {jwks.url}
  audience: [{AUDIENCE}, other]
  jwks-fetch-minutes: 60
"""), work, log_name="jwks.log").start()
    try:
        with channel(server.address) as ch:
            print("RS256 from a JWKS:")
            find_missing(ch, rs256(first, "first"))
            expect_status(grpc.StatusCode.UNAUTHENTICATED, "bad signature", find_missing, ch, rs256(impostor, "first"))
            expect_status(grpc.StatusCode.UNAUTHENTICATED, "wrong audience", find_missing, ch,
                          jwt.encode({"sub": "x", "aud": "elsewhere", "exp": int(time.time()) + 60}, first,
                                     algorithm="RS256", headers={"kid": "first"}))
            fetches = jwks.fetches
            jwks.publish("second", second)
            find_missing(ch, rs256(second, "second"))
            assert jwks.fetches == fetches + 1, f"one fetch for the new key id, saw {jwks.fetches - fetches}"
            for _ in range(5):
                expect_status(grpc.StatusCode.UNAUTHENTICATED, "unknown key id", find_missing, ch, rs256(impostor, "made-up"))
            assert jwks.fetches <= fetches + 2, f"made-up key ids are rate-limited, saw {jwks.fetches - fetches} fetches"
            print(f"  published key passes, rotated key picked up with one fetch, {jwks.fetches} fetches in all")
    finally:
        assert server.terminate(30) == 0, server.log()
        jwks.server.shutdown()


def main():
    with tempfile.TemporaryDirectory() as work:
        part_hs256(work)
        part_jwks(work)
    print("authorization e2e: passed")


if __name__ == "__main__":
    main()
