#!/usr/bin/env python3
"""SIGKILL during many concurrent uploads to !disk-storage loses no acknowledged blob, shows no partial one.

ROUNDS (4) times: start `strata serve` on one !disk-storage folder, run 16 threads of ByteStream
Writes (grpcio) of blobs from 1 byte to 2 MiB for 1-2.5 s, then SIGKILL the server mid-stream. After
each restart every blob acknowledged so far must read back byte for byte, and every file in the
storage's cas/ folder must hold exactly the bytes its name (hash_size) says: a write cut short is
never visible.

    Tests/faults/sigkill_uploads.py    (needs grpcio; STRATA_BINARY, default .build/debug/strata)
"""
import hashlib
import os
import random
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import strata_process as sp  # noqa: E402

ROUNDS = int(os.environ.get("SIGKILL_ROUNDS", "4"))
THREADS = 16


def blob(seed):
    rng = random.Random(seed)
    size = rng.choice([1, 100, 4096, 65536, 300_000, 1 << 20, 2 << 20]) + rng.randrange(0, 1000)
    return rng.randbytes(size)


def upload_until_killed(address, first_seed, acknowledged, lock, stop):
    channel = sp.channel(address)
    seed = first_seed
    while not stop.is_set():
        data = blob(seed)
        try:
            if sp.upload(channel, data, timeout=30):
                with lock:
                    acknowledged.append(seed)
        except grpc.RpcError:
            pass  # the server died under this call: not acknowledged, so nothing is owed
        seed += THREADS
    channel.close()


def verify(address, seeds):
    channel = sp.channel(address, **{"grpc.max_receive_message_length": 64 << 20})
    lost = []
    for seed in seeds:
        data = blob(seed)
        digest, size = sp.digest_of(data)
        try:
            if sp.download(channel, digest, size) != data:
                lost.append(f"{digest}/{size}: wrong bytes")
        except grpc.RpcError as error:
            lost.append(f"{digest}/{size}: {error.code()}")
    channel.close()
    return lost


def partial_files(cas):
    bad = []
    for folder, _, files in os.walk(cas):
        for name in files:
            expected, _, size = name.partition("_")
            with open(os.path.join(folder, name), "rb") as f:
                content = f.read()
            if hashlib.sha256(content).hexdigest() != expected or str(len(content)) != size:
                bad.append(name)
    return bad


def main():
    failures = []
    acknowledged = []
    lock = threading.Lock()
    rng = random.Random(7)
    with sp.temporary_directory() as work:
        storage = os.path.join(work, "storage")
        config = sp.disk_config(storage)
        next_seed = 0
        for round_ in range(ROUNDS + 1):
            server = sp.Server(config, work).start()
            try:
                with lock:
                    owed = list(acknowledged)
                lost = verify(server.address, owed)
                partial = partial_files(os.path.join(storage, "cas"))
                print(f"sigkill_uploads: restart {round_}: {len(owed)} acknowledged blobs, {len(lost)} lost, "
                      f"{len(partial)} partial files")
                failures += [f"lost {each}" for each in lost[:10]] + [f"partial file {each}" for each in partial[:10]]
                if round_ == ROUNDS:
                    status = server.terminate(60)
                    if status != 0:
                        failures.append(f"strata exited {status} after SIGTERM")
                    break
                stop = threading.Event()
                threads = [threading.Thread(target=upload_until_killed,
                                            args=(server.address, next_seed + i, acknowledged, lock, stop), daemon=True)
                           for i in range(THREADS)]
                next_seed += 1_000_000
                for thread in threads:
                    thread.start()
                time.sleep(rng.uniform(1.0, 2.5))
                server.process.kill()  # SIGKILL, mid-upload
                server.process.wait()
                stop.set()
                for thread in threads:
                    thread.join(60)
            finally:
                server.kill()
    for failure in failures:
        print(f"sigkill_uploads: FAILED: {failure}")
    return 1 if failures or not acknowledged else 0


if __name__ == "__main__":
    sys.exit(main())
