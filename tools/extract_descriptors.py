#!/usr/bin/env python3
"""Write a FileDescriptorSet from the serialized descriptors inside BuildGrid's *_pb2.py modules
(and those of other wheels unpacked into the same folder, such as grpcio-health-checking's).

The modules are parsed with `ast`, never imported or run: we only read the bytes literal passed to
`AddSerializedFile(...)`. Well-known types (google/protobuf/*) come from protoc's own includes,
because swift-protobuf ships their Swift code already.

usage: extract_descriptors.py WHEEL_DIR OUT.pb FILE.proto...
"""
import ast
import pathlib
import sys


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(buf: bytes, i: int):
    shift = 0
    value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def dependencies(fdp: bytes):
    """Field 3 of FileDescriptorProto: the imported file names."""
    i, deps = 0, []
    while i < len(fdp):
        key, i = read_varint(fdp, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = read_varint(fdp, i)
        elif wire == 2:
            n, i = read_varint(fdp, i)
            if field == 3:
                deps.append(fdp[i:i + n].decode())
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return deps


def serialized_descriptor(pb2: pathlib.Path) -> bytes:
    tree = ast.parse(pb2.read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile"):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, bytes):
                return arg.value
    raise SystemExit(f"{pb2}: no AddSerializedFile(b'...') literal")


def main() -> None:
    # BuildGrid's modules live under buildgrid/_protos; other wheels' (grpc_health) at their top.
    roots = [pathlib.Path(sys.argv[1]) / "buildgrid" / "_protos", pathlib.Path(sys.argv[1])]
    out = pathlib.Path(sys.argv[2])
    wanted = sys.argv[3:]
    files: dict[str, bytes] = {}
    pending = list(wanted)
    while pending:
        name = pending.pop()
        if name in files or name.startswith("google/protobuf/"):
            continue
        pb2 = next((r / name.replace(".proto", "_pb2.py") for r in roots
                    if (r / name.replace(".proto", "_pb2.py")).exists()), roots[0] / name.replace(".proto", "_pb2.py"))
        files[name] = serialized_descriptor(pb2)
        pending.extend(dependencies(files[name]))
    # Dependencies first, so every consumer sees its imports before itself.
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered or name not in files:
            return
        for dep in dependencies(files[name]):
            visit(dep)
        ordered.append(name)

    for name in sorted(files):
        visit(name)
    body = b"".join(b"\x0a" + varint(len(files[n])) + files[n] for n in ordered)
    out.write_bytes(body)
    for n in ordered:
        print(n)


if __name__ == "__main__":
    main()
