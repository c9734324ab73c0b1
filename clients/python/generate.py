"""Generates the gRPC stubs in src/flowstate/v1 from ../../proto with grpcio-tools.

    python generate.py            # write the stubs
    python generate.py --check    # fail if the committed stubs differ from what the protos give

The stubs are committed so `pip install ./clients/python` needs no code generation; CI runs
--check so they can never drift from the protos.
"""

import filecmp
import pathlib
import sys
import tempfile

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
TARGET = HERE / "src"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    protos = sorted(PROTO_ROOT.glob("flowstate/v1/*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / "flowstate" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = generate(pathlib.Path(tmp))
            stale = []
            for f in fresh:
                committed = TARGET / f.relative_to(tmp)
                if not committed.exists() or not filecmp.cmp(f, committed, shallow=False):
                    stale.append(str(committed.relative_to(HERE)))
            names = {f.name for f in fresh}
            extra = [
                str(p.relative_to(HERE))
                for p in (TARGET / "flowstate" / "v1").glob("*_pb2*.py*")
                if p.name not in names
            ]
            if stale or extra:
                print("stubs out of date; run: python clients/python/generate.py")
                for name in stale + extra:
                    print("  ", name)
                return 1
            print(f"{len(fresh)} stub files match the protos")
            return 0
    for f in generate(TARGET):
        print("wrote", f.relative_to(HERE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
