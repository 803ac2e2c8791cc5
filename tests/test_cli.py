"""The `semgen` command: one dispatcher, each layer's commands as options dataclasses through one
generator (semgen/options.py), and a client side that never imports torch."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import semgen_cli
from semgen.options import REQUIRED, Command, add_options, opt, options_from_args, write_options

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("scenes", "bench", "train", "eval", "export", "import", "serve", "client", "batch")
HEAVY = ("torch", "training", "export", "semgen.pipelines", "serving.server", "ray")


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every runnable command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaves(sub, (*path, name))


ALL = dict(leaves(semgen_cli.build_parser()))
# what the required flags of a command are given in the round trip, and the options they make
REQUIRED_FLAGS = {
    "--image": ("a.png", "a.png"), "--region": ("r.png", "r.png"), "--object": ("o.png", "o.png"),
    "--box": ("1,2,3,4", (1, 2, 3, 4)), "--latents": ("l.npy", "l.npy"), "--head": ("lse", "lse"),
    "--name": ("mine", "mine"), "--masks": ("m.png", ("m.png",)), "--class-names": ("a,b", ("a", "b")),
    "--target": ("t.png", "t.png"), "--edit": ("horizon:2", (("horizon", 2.0, None),)), "--handler": ("h.py", "h.py"),
    "--checkpoints": ("a,b", ("a", "b")), "--out": ("o", "o"), "--src": ("g.pkl", "g.pkl"),  # src: positional
    "--npy": ("d.npy", "d.npy"), "--models": ("m", "m"),  # import direction: name and npy positional
}
ONE_OF = {("client", "semantics", "sample"): ("--seeds", "1,2", "seeds", (1, 2)),
          ("client", "manipulate"): ("--seed", "3", "seeds", (3,)),
          ("batch",): ("--manifest", "jobs.jsonl", "manifest", "jobs.jsonl")}


def test_every_command_is_one_dataclass_whose_flags_give_its_defaults():
    assert len(ALL) >= 35
    for path, parser in ALL.items():
        func = parser._defaults.get("func")
        assert isinstance(func, Command) and dataclasses.is_dataclass(func.options), path
        argv, given = list(path), {}
        for f in dataclasses.fields(func.options):
            if f.default is dataclasses.MISSING:
                flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                argv += [REQUIRED_FLAGS[flag][0]] if f.metadata.get("positional") else [flag, REQUIRED_FLAGS[flag][0]]
                given[f.name] = REQUIRED_FLAGS[flag][1]
        if path in ONE_OF:
            flag, text, name, value = ONE_OF[path]
            argv += [flag, text]
            given[name] = value
        args = semgen_cli.build_parser(argv).parse_args(argv)
        assert args.func.options is func.options
        assert options_from_args(func.options, args) == func.options(**given), path


def test_help_lists_every_command_and_imports_no_layer(capsys):
    with pytest.raises(SystemExit) as done:
        semgen_cli.main(["--help"])
    printed = capsys.readouterr().out
    assert done.value.code == 0 and all(f"    {word}" in printed for word in WORDS)
    assert semgen_cli.layers(["--help"]) == [] and semgen_cli.layers([]) == []
    with pytest.raises(SystemExit):
        semgen_cli.main(["bench", "--help"])  # two layers hold bench commands: both are listed
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("scenes", "imagine", "serve"))


def test_the_first_words_pick_one_layer():
    assert semgen_cli.layers(["client", "pyramid", "generate"]) == [("serving.cli", "client")]
    assert semgen_cli.layers(["serve", "--port", "0"]) == [("serving.cli", "serve")]
    assert semgen_cli.layers(["bench", "serve", "--json"]) == [("serving.cli", "bench")]
    assert semgen_cli.layers(["bench", "soak"]) == [("serving.cli", "bench")]
    assert semgen_cli.layers(["bench", "batch"]) == [("serving.cli", "bench")]
    assert semgen_cli.layers(["batch", "--manifest", "m.jsonl"]) == [("serving.cli", "batch")]
    assert semgen_cli.layers(["bench", "scenes"]) == [("training.cli", "bench")]
    assert semgen_cli.layers(["bench"]) == [("training.cli", "bench"), ("serving.cli", "bench")]
    assert semgen_cli.layers(["eval", "pyramid"]) == [("training.cli", "eval")]
    assert semgen_cli.layers(["export", "mar"]) == [("export.cli", "export")]
    assert semgen_cli.layers(["import", "stylegan2"]) == [("export.cli", "import")]
    assert semgen_cli.layers(["scenes", "render"]) == [("training.scenes_cli", "scenes")]
    assert {m for m, _ in semgen_cli.layers(None)} == {"training.cli", "training.scenes_cli", "export.cli",
                                                       "serving.cli"}
    assert {w for _, w in semgen_cli.layers(None)} == set(WORDS)


CLIENT_HELP = """
import sys, semgen_cli
for argv in (["client", "pyramid", "generate"], ["client", "semantics", "sample"], ["client", "imagine"],
             ["client", "manipulate"], ["client", "attributes"], ["client"], ["serve"], ["batch"], []):
    try:
        semgen_cli.main([*argv, "--help"])
    except SystemExit as e:
        assert e.code == 0, argv
print("IMPORTED", sorted(m for m in {heavy} if m in sys.modules))
"""


def test_client_serve_and_help_never_import_torch():
    done = subprocess.run([sys.executable, "-c", CLIENT_HELP.format(heavy=HEAVY)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "IMPORTED []"
    assert "--address" in done.stdout and "--max-batch-delay-ms" in done.stdout


def test_the_export_flags_the_server_and_the_bench_ask_for():
    argv = ["export", "mar", "--models", "M", "--store", "S", "--handler", "H", "--onnx-cache", "C",
            "--batch-size", "4", "--max-batch-delay-ms", "2.5", "--ort-threads", "3"]
    args = semgen_cli.build_parser(argv).parse_args(argv)
    o = options_from_args(args.func.options, args)
    assert (o.models, o.store, o.handler, o.onnx_cache, o.batch_size, o.max_batch_delay_ms, o.ort_threads) == \
        ("M", "S", "H", "C", 4, 2.5, 3)
    argv = ["export", "onnx", "--models", "M", "--cache", "C"]
    o = options_from_args(ALL[("export", "onnx")]._defaults["func"].options,
                          semgen_cli.build_parser(argv).parse_args(argv))
    assert (o.models, o.cache, o.out) == ("M", "C", "exports/onnx")
    with pytest.raises(SystemExit):  # export must not know the handler by heart
        semgen_cli.build_parser(["export", "mar"]).parse_args(["export", "mar", "--store", "S"])


def test_export_refuses_what_the_cache_and_store_keys_do_not_hold(tmp_path, capsys):
    handler = tmp_path / "handler.py"
    handler.write_text("# a handler\n")
    with pytest.raises(SystemExit) as done:
        semgen_cli.main(["export", "mar", "--store", str(tmp_path / "s"), "--handler", str(handler), "--workers", "2"])
    assert done.value.code == 2 and "--workers applies without --store" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        semgen_cli.main(["export", "mar", "--handler", str(tmp_path / "nope.py"), "--out", str(tmp_path / "o")])
    assert done.value.code == 2 and "is not a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        semgen_cli.main(["export", "onnx", "--cache", str(tmp_path / "c"), "--head", "nse1"])
    assert done.value.code == 2 and "--head applies without --cache" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("s", "o", "c"))


def test_serve_flags_stay_as_they_were():
    from serving.options import ServeOptions, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert ServeOptions.from_args(parser.parse_args([])) == ServeOptions()
    opts = ServeOptions.from_args(parser.parse_args(["--port", "0", "--engine", "torchserve", "--onnx-dir", "o",
                                                     "--max-batch-delay-ms", "2", "--max-image-bytes", "10"]))
    assert (opts.port, opts.engine, opts.onnx_dir, opts.max_batch_delay_ms, opts.max_image_bytes) == \
        (0, "torchserve", "o", 2.0, 10)
    with pytest.raises(SystemExit):
        parser.parse_args(["--runtime", "tensorrt"])  # choices come from the dataclass
    assert "(default: 50051)" in parser.format_help()


def test_scenes_preview_writes_its_options_beside_the_picture(tmp_path, capsys):
    from training.scenes_cli import ScenesPreview

    with pytest.raises(SystemExit) as done:
        semgen_cli.main(["scenes", "preview", "--out", str(tmp_path / "p.png"), "--n", "2", "--size", "16"])
    assert done.value.code == 0 and (tmp_path / "p.png").is_file()
    written = json.loads((tmp_path / "p_options.json").read_text())
    assert ScenesPreview(**written) == ScenesPreview(out=str(tmp_path / "p.png"), n=2, size=16)


SCENE = """
import sys, semgen_cli
try:
    semgen_cli.main(["scenes", "render", "--seed", "3", "--category", "beach", "--size", "96", "--out", sys.argv[1],
                     "--labels", sys.argv[2]])
except SystemExit as e:
    assert e.code == 0
print("IMPORTED", sorted(m for m in ("torch", "semgen.pipelines", "serving") if m in sys.modules))
"""


def test_scenes_render_writes_one_scene_without_torch(tmp_path):
    from PIL import Image

    from semgen.data.scenes import CLASSES, render_scene

    done = subprocess.run([sys.executable, "-c", SCENE, str(tmp_path / "s.png"), str(tmp_path / "l.png")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"wrote {tmp_path / 's.png'} (96x96 photo, beach, seed 3)", "IMPORTED []"]
    image, labels = np.asarray(Image.open(tmp_path / "s.png")), np.asarray(Image.open(tmp_path / "l.png"))
    scene = render_scene(3, 96, "beach")
    assert np.array_equal(image, scene.image) and np.array_equal(labels, scene.labels)
    assert image.shape == (96, 96, 3) and labels.max() < len(CLASSES) and len(np.unique(labels)) > 2
    bad = subprocess.run([sys.executable, "-m", "semgen_cli", "scenes", "render", "--category", "moon"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--category must be random or one of beach" in bad.stderr


# ---- the generator ----------------------------------------------------------------------------

def _pair(text: str) -> tuple[int, int]:
    a, b = text.split("x")
    return int(a), int(b)


@dataclass(frozen=True, kw_only=True)
class Toy:
    name: str = opt(REQUIRED, "required text")
    n: int = opt(3, "an integer")
    rate: float = opt(0.5, "50% of it")
    fast: bool = opt(True, "a switch")
    sizes: tuple[int, ...] = opt((1, 2), "comma-separated")
    words: tuple[str, ...] = opt((), "comma-separated words")
    limit: int | None = opt(None, "optional")
    mode: str = opt("a", "one of a, b", choices=("a", "b"))
    files: tuple[str, ...] = opt(REQUIRED, "several values", nargs="+")
    tag: tuple[str, ...] = opt((), "repeatable", append=True)
    size: tuple[int, int] | None = opt(None, "WxH", parse=_pair)
    left: int | None = opt(None, "one side", group="side")
    right: int | None = opt(None, "the other side", group="side")
    plain: str = "no help"


def toy(*argv: str) -> Toy:
    return options_from_args(Toy, add_options(argparse.ArgumentParser(), Toy).parse_args(argv))


def test_the_generator_types_flags_from_the_annotations():
    assert toy("--name", "x", "--files", "f") == Toy(name="x", files=("f",))
    got = toy("--name", "x", "--n", "7", "--rate", "0.25", "--no-fast", "--sizes", "4,5,6", "--words", "a,b",
              "--limit", "9", "--mode", "b", "--files", "f", "g", "--tag", "t1", "--tag", "t2", "--size", "3x4",
              "--right", "1", "--plain", "p")
    assert got == Toy(name="x", n=7, rate=0.25, fast=False, sizes=(4, 5, 6), words=("a", "b"), limit=9, mode="b",
                      files=("f", "g"), tag=("t1", "t2"), size=(3, 4), right=1, plain="p")
    for bad in (["--mode", "c"], ["--sizes", "1,x"], ["--left", "1", "--right", "2"], ["--n", "1.5"], []):
        with pytest.raises(SystemExit):
            toy(*(["--name", "x", "--files", "f"] if bad else []), *bad)
    text = add_options(argparse.ArgumentParser(), Toy).format_help()
    assert "50% of it (default: 0.5)" in text and "(default: 1,2)" in text and "--no-fast" in text


def test_options_are_written_as_json_beside_the_outputs(tmp_path):
    options = toy("--name", "x", "--files", "f", "--sizes", "7")
    path = write_options(options, tmp_path / "out", "toy_options")
    assert path == tmp_path / "out" / "toy_options.json"
    assert json.loads(path.read_text()) == {**dataclasses.asdict(options), "sizes": [7], "files": ["f"],
                                            "words": [], "tag": []}


def test_a_field_without_a_flag_type_is_refused():
    @dataclass
    class Bad:
        where: Path = Path(".")

    with pytest.raises(TypeError, match="no flag"):
        add_options(argparse.ArgumentParser(), Bad)


def test_every_flag_of_every_command_says_what_it_is():
    for words, parser in ALL.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) >= 10, (words, action.option_strings)
