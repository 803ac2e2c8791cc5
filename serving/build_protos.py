"""Generate the Python gRPC stubs from protos/ into serving/_generated/.

    python -m serving.build_protos [--protos DIR] [--out DIR]

protoc writes `from semgen.v1 import pyramid_pb2`, which would resolve to the semgen
*library* package, so the imports are rewritten to `serving._generated.semgen.v1` and every
output folder gets an `__init__.py`. The result imports as
`from serving._generated.semgen.v1 import pyramid_pb2`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

SERVING_DIR = Path(__file__).resolve().parent
DEFAULT_PROTOS = SERVING_DIR.parent / "protos"
DEFAULT_OUT = SERVING_DIR / "_generated"
PACKAGE = "serving._generated"


def build(protos_dir: Path = DEFAULT_PROTOS, out_dir: Path = DEFAULT_OUT) -> list[Path]:
    """Regenerate all stubs; returns the generated .py files."""
    protos_dir, out_dir = Path(protos_dir).resolve(), Path(out_dir).resolve()
    sources = sorted(protos_dir.rglob("*.proto"))
    if not sources:
        raise FileNotFoundError(f"no .proto files under {protos_dir}")
    # Start clean so stubs of deleted .proto files cannot linger.
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{protos_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in sources),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")

    # Rewrite absolute imports of our own proto packages (top-level folders of protos/).
    roots = sorted(p.name for p in protos_dir.iterdir() if p.is_dir())
    pattern = re.compile(rf"^(\s*)(from|import) ({'|'.join(map(re.escape, roots))})\b", re.M)
    generated = sorted(out_dir.rglob("*.py")) + sorted(out_dir.rglob("*.pyi"))
    for path in generated:
        text = path.read_text()
        path.write_text(pattern.sub(rf"\1\2 {PACKAGE}.\3", text))

    for folder in [out_dir, *(d for d in out_dir.rglob("*") if d.is_dir())]:
        (folder / "__init__.py").touch()
    return [p for p in generated if p.suffix == ".py"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protos", type=Path, default=DEFAULT_PROTOS, help="root of the .proto tree")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output package folder")
    args = parser.parse_args(argv)
    files = build(args.protos, args.out)
    print(f"generated {len(files)} stub modules in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
