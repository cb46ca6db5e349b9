"""Regenerate the committed protobuf/gRPC code: ``python -m annfleet.protogen [OUT_DIR]``.

The generated modules live beside their ``.proto`` files in ``protos/annfleet/v1`` so the
import path equals the proto path (``annfleet.v1.shard_pb2``). ``tests/test_protos.py``
regenerates into a temporary directory and fails when the committed files drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted((root / "annfleet" / "v1").glob("*.proto"))


def generate(out_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on every proto; return the generated files under ``out_root``."""
    from grpc_tools import protoc  # dev dependency, imported only here

    out_root.mkdir(parents=True, exist_ok=True)
    protos = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    out_dir = out_root / "annfleet" / "v1"
    return sorted(p for p in out_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    for path in generate(out):
        print(path)


if __name__ == "__main__":
    main()
