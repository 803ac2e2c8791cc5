"""The README's quick start, run as a stranger would: every shell line and Python block of that section, in a fresh
folder, against `semgen serve` on the bundled models (it stands in for `make serve`, which the first block runs).
The addresses of the README (127.0.0.1:50051 and :8000) become the test server's. grpcurl is not packaged for these
machines: where it is missing, its lines' request JSON is checked through the project's own descriptors."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serving"))

from servingkit import serve_subprocess  # noqa: E402

from serving.core.protos import imagine_pb2, pyramid_pb2  # noqa: E402,F401  (registers the descriptors)


def quick_start() -> list[tuple[str, str]]:
    """(language, code) of every fenced block in the README's "Quick start" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def test_the_quick_start_has_what_the_issue_asks_for():
    blocks = quick_start()
    shell = "\n".join(code for lang, code in blocks if lang == "sh")
    assert [lang for lang, _ in blocks].count("python") == 1
    for needed in ("make serve", "semgen client health", "semgen scenes render", "semgen client pyramid generate",
                   "grpcurl", "ImagineService/Imagine", "curl "):
        assert needed in shell, needed


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve_subprocess(["--models", str(ROOT / "artifacts"), "--onnx-dir", str(tmp_path_factory.mktemp("onnx")),
                           "--heads-dir", str(tmp_path_factory.mktemp("heads"))]) as server:
        yield server


def localize(line: str, server) -> str:
    return line.replace("127.0.0.1:50051", server.address).replace("127.0.0.1:8000", server.http_url[len("http://"):])


def run_shell(line: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
    return done


def check_grpcurl_request(line: str, cwd: Path, env: dict) -> None:
    """The -d JSON (after bash expanded it) parses as the request message of the method the line names: bash runs
    the line with `grpcurl` defined as a function that prints its -d argument and its last (the method)."""
    stand_in = 'grpcurl() { method="${@: -1}"; while [ "$1" != -d ]; do shift; done; printf "%s\\n%s" "$method" "$2"; }'
    method, data = run_shell(f"{stand_in}; {line}", cwd, env).stdout.split("\n", 1)
    service, name = method.rsplit("/", 1)
    input_type = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name).input_type
    request = json_format.Parse(data, message_factory.GetMessageClass(input_type)())
    assert request.ByteSize() > 1000  # the scene's bytes went in


def test_every_quick_start_command_and_block_runs(served, tmp_path):
    env = {**os.environ, "SEMGEN_ADDRESS": served.address,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    printed = {}
    for lang, code in quick_start():
        if lang == "python":
            done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            printed["python"] = done.stdout
            continue
        for line in code.splitlines():
            line = localize(line.split("  #", 1)[0].strip(), served)
            if not line or line == "make serve":  # the served bundle stands in for `make serve`
                continue
            if line == "source .venv/bin/activate":  # PATH holds the project's venv already
                continue
            if line.startswith("grpcurl") and shutil.which("grpcurl") is None:
                check_grpcurl_request(line, tmp_path, env)
                continue
            printed[line.split()[0] + " " + " ".join(line.split()[1:3])] = run_shell(line, tmp_path, env).stdout

    # what the quick start says comes back
    assert printed["semgen client health"].splitlines()[0].split() == ["server", "SERVING"]
    scene = np.asarray(Image.open(tmp_path / "scene.png"))
    assert scene.shape == (128, 128, 3)
    samples = sorted((tmp_path / "samples").glob("generate_conv5_seed1_*.png"))
    assert [p.name for p in samples] == [f"generate_conv5_seed1_{i:02d}.png" for i in range(4)]
    assert all(Image.open(p).size == (64, 64) and Image.open(p).mode == "RGB" for p in samples)
    assert "generate_options.json" in printed["ls samples/"]
    assert printed["python"].strip() == "2 (64, 64) RGB"
    assert Image.open(tmp_path / "conv3_1.png").size == (64, 64)
    assert printed[next(k for k in printed if k.startswith("curl"))].strip() == "200"
    if shutil.which("grpcurl"):
        replies = [v for k, v in printed.items() if k.startswith("grpcurl")]
        assert json.loads(replies[0])["width"] == 64


def readme_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def semgen_commands() -> list[str]:
    """Every `semgen ...` command line of the README's shell blocks (continuation lines joined, comments cut)."""
    commands = []
    for lang, code in readme_blocks():
        if lang not in ("", "sh"):
            continue
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            match = re.search(r"(?:^|\s)semgen (\w.*)$", line)
            if match and not line.startswith("#"):
                commands.append(match.group(1))
    return commands


def test_every_semgen_command_in_the_readme_parses():
    """The README's other commands train for hours or need a GPU: each is parsed by the `semgen` parser (a renamed
    or removed flag fails here), the quick start's run for real above."""
    import semgen_cli

    commands = semgen_commands()
    assert len(commands) >= 25
    for command in commands:
        if "..." in command:  # "semgen serve ... --tls-client-ca": an excerpt of a command shown above it
            continue
        argv = shlex.split(command)
        try:
            semgen_cli.build_parser(argv).parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"`semgen {command}` does not parse (exit {e.code})")


def test_every_other_readme_python_block_runs(served, tmp_path):
    """Outside the quick start: the pyramid client's tour and the tritonclient example (in .venv-oip), in a folder
    with the quick start's scene.png, against the served bundle."""
    (tmp_path / "scene.png").write_bytes(render_scene_png())
    blocks = [code for lang, code in readme_blocks() if lang == "python"][1:]  # the first is the quick start's
    assert len(blocks) == 2
    for code in blocks:
        python = ROOT / ".venv-oip" / "bin" / "python" if "tritonclient" in code else Path(sys.executable)
        done = subprocess.run([str(python), "-c", localize(code, served)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip() in ("1 1 1", "(2, 128)"), done.stdout


def render_scene_png() -> bytes:
    import io

    from semgen.data.scenes import render_scene

    buf = io.BytesIO()
    Image.fromarray(render_scene(3, 128, "beach").image).save(buf, "PNG")
    return buf.getvalue()


def test_every_readme_python_block_compiles_and_its_imports_exist():
    import importlib

    blocks = [code for lang, code in readme_blocks() if lang == "python"]
    assert len(blocks) >= 3
    for code in blocks:
        compile(code, "README.md", "exec")
        for module, names in re.findall(r"^from ([\w.]+) import ([\w, ]+)$", code, re.M):
            if module.split(".")[0] in ("serving", "semgen", "training", "export"):
                for name in names.split(","):
                    assert hasattr(importlib.import_module(module), name.strip()), (module, name)


def test_the_readme_links_only_files_of_the_repository():
    for target in re.findall(r"\]\((?!https?://|#)([^)]+)\)", (ROOT / "README.md").read_text()):
        assert (ROOT / target).exists(), target
