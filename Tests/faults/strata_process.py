"""Shared by the fault tests: a `strata serve` process, and REAPI calls made with grpcio (C-core).

The few REAPI messages the tests need are encoded here by hand (protobuf's wire format), so the
tests need only grpcio and h2 from PyPI, not generated code.
"""
import ctypes
import hashlib
import os
import re
import resource
import signal
import subprocess
import tempfile
import time
import uuid

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
STRATA = os.environ.get("STRATA_BINARY", os.path.join(ROOT, ".build", "debug", "strata"))


class Server:
    """`strata serve CONFIG` on 127.0.0.1 with a free port; `address` once it listens."""

    def __init__(self, config_text, workdir, extra_args=(), log_name="server.log", max_open_files=None):
        self.config = os.path.join(workdir, "strata.yml")
        with open(self.config, "w") as f:
            f.write(config_text)
        self.log_path = os.path.join(workdir, log_name)
        self.extra_args = list(extra_args)
        self.max_open_files = max_open_files
        self.process = None
        self.address = None

    def start(self, timeout=30):
        log = open(self.log_path, "a")
        # A restart appends to the log: only what this process writes names its address.
        self.log_start = log.tell()
        self.process = subprocess.Popen(
            [STRATA, "serve", self.config, "--address", "127.0.0.1:0", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._prepare_child)
        log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with open(self.log_path) as f:
                f.seek(self.log_start)
                found = re.findall(r"strata listening on (127\.0\.0\.1:\d+)", f.read())
            if found:
                self.address = found[-1]
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"strata exited {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"strata did not start:\n{self.log()}")

    def _prepare_child(self):
        # The server dies with the test, even one killed outright: a test never leaves it running.
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if self.max_open_files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_open_files, self.max_open_files))

    def cpu_seconds(self):
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def rss_bytes(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def terminate(self, timeout):
        """SIGTERM; the exit status, or None if still running after `timeout` seconds (then killed)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def lru_config(size="1G", channel_options=""):
    # The address is replaced by `--address 127.0.0.1:0`, which keeps the channel's options.
    return f"""
server:
  - !channel
    address: "127.0.0.1:50051"
    insecure-mode: true
    {channel_options}
storages:
  - !lru-storage &cas
    size: {size}
instances:
  - name: ""
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"""


def disk_config(path):
    return f"""
server:
  - !channel
    address: "127.0.0.1:0"
    insecure-mode: true
storages:
  - !disk-storage &cas
    path: {path}
instances:
  - name: ""
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"""


# --- protobuf wire format, the handful of fields the tests use -------------------------------------
def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, wire_type, payload):
    key = _varint(number << 3 | wire_type)
    if wire_type == 0:
        return key + _varint(payload)
    return key + _varint(len(payload)) + payload


def _read_varint(data, index):
    shift = value = 0
    while True:
        byte = data[index]
        index += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, index


def _fields(data):
    index = 0
    while index < len(data):
        key, index = _read_varint(data, index)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, index = _read_varint(data, index)
        elif wire_type == 2:
            length, index = _read_varint(data, index)
            value = data[index:index + length]
            index += length
        else:
            raise ValueError(f"unexpected wire type {wire_type}")
        yield number, value


def digest_of(data):
    return hashlib.sha256(data).hexdigest(), len(data)


def write_requests(data, chunk=1 << 20):
    """google.bytestream.WriteRequest messages uploading `data`, under a fresh upload id."""
    digest, size = digest_of(data)
    resource = f"uploads/{uuid.uuid4()}/blobs/{digest}/{size}".encode()
    offset = 0
    while True:
        piece = data[offset:offset + chunk]
        last = offset + len(piece) >= size
        message = b""
        if offset == 0:
            message += _field(1, 2, resource)
        if offset:
            message += _field(2, 0, offset)
        if last:
            message += _field(3, 0, 1)
        if piece:
            message += _field(10, 2, piece)
        yield message
        offset += len(piece)
        if last:
            return


def committed_size(response):
    for number, value in _fields(response):
        if number == 1:
            return value
    return 0


def read_request(digest, size):
    return _field(1, 2, f"blobs/{digest}/{size}".encode())


def read_response_data(response):
    for number, value in _fields(response):
        if number == 10:
            return bytes(value)
    return b""


def channel(address, **options):
    return grpc.insecure_channel(address, options=list(options.items()))


def byte_stream_write(channel_):
    return channel_.stream_unary(
        "/google.bytestream.ByteStream/Write", request_serializer=None, response_deserializer=None)


def byte_stream_read(channel_):
    return channel_.unary_stream(
        "/google.bytestream.ByteStream/Read", request_serializer=None, response_deserializer=None)


def upload(channel_, data, timeout=60):
    """Uploads `data` with ByteStream Write; True when the server acknowledged all of it."""
    size = len(data)
    return committed_size(byte_stream_write(channel_)(write_requests(data), timeout=timeout)) == size


def download(channel_, data_digest, size, timeout=60):
    return b"".join(read_response_data(r) for r in byte_stream_read(channel_)(read_request(data_digest, size), timeout=timeout))


def temporary_directory():
    return tempfile.TemporaryDirectory(prefix="strata-faults-")
