"""Builds the package, generating the protobuf modules from the contract in proto/ first.

The .proto files live at the repository's root (../../proto); the generated colony_pb2 module
and its typing stub go into the built package as colony_client/_gen/colony/v1/.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTOS = ["colony/v1/colony.proto"]


def generate(package_dir: str) -> None:
    """Runs protoc (from grpcio-tools) into package_dir/_gen."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out = os.path.join(package_dir, "_gen")
    os.makedirs(out, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--pyi_out={out}"]
    args += [os.path.join(PROTO_ROOT, p) for p in PROTOS]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on " + ", ".join(PROTOS))
    # The generated module imports nothing of ours; packages make it importable by path.
    for d in ["", "colony", os.path.join("colony", "v1")]:
        init = os.path.join(out, d, "__init__.py")
        if not os.path.exists(init):
            with open(init, "w", encoding="utf-8") as f:
                f.write('"""Generated from proto/ at build time."""\n')


class BuildWithProtos(build_py):
    def run(self) -> None:
        super().run()
        generate(os.path.join(self.build_lib, "colony_client"))


setup(cmdclass={"build_py": BuildWithProtos})
