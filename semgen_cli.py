"""The `semgen` command: a dispatcher. Each layer owns its commands (training/cli.py, export/cli.py,
serving/cli.py: one options dataclass + one function each, flags from semgen/options.py); the first
words pick the one layer module to import, so `semgen client ...` never imports torch, training or
export. It lives outside the `semgen` package so that the library imports none of the layers."""

from __future__ import annotations

import argparse
import importlib
import sys

WORDS = {  # first word -> (help, the layer module holding its commands)
    "scenes": ("the procedural scene world", "training.scenes_cli"),
    "bench": ("speed measurements", "training.cli"),
    "train": ("train the default models", "training.cli"),
    "eval": ("evaluate models, write reports/", "training.cli"),
    "export": ("convert the models for other runtimes (the build step before serving)", "export.cli"),
    "import": ("bring your own models: a StyleGAN2 checkpoint as a bundle folder", "export.cli"),
    "serve": ("serve the models over gRPC", "serving.cli"),
    "client": ("call a running server", "serving.cli"),
    "batch": ("a resumable job over many requests: through a server, or on Ray Data", "serving.cli"),
}
# commands held by another layer than their first word's
ELSEWHERE = {("bench", word): "serving.cli" for word in ("serve", "soak", "batch", "golden", "autoscale")}


def layers(argv: list[str] | None) -> list[tuple[str, str]]:
    """(layer module, first word) of the commands `argv` needs: all for None, none for `semgen --help`, every
    layer's commands under the first word when no second word picks one (`semgen bench --help`)."""
    pairs = list(dict.fromkeys([(module, word) for word, (_, module) in WORDS.items()] +
                               [(m, w) for (w, _), m in ELSEWHERE.items()]))
    if argv is None:
        return pairs
    if not argv or argv[0] not in WORDS:
        return []
    word, second = argv[0], (argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None)
    if (word, second) in ELSEWHERE:
        return [(ELSEWHERE[word, second], word)]
    if second is not None:
        return [(WORDS[word][1], word)]
    return [(module, w) for module, w in pairs if w == word]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `semgen` parser with the commands `argv` needs (None: every command)."""
    parser = argparse.ArgumentParser(prog="semgen", description="semantic image generation and editing")
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {word: sub.add_parser(word, help=text, description=text) for word, (text, _) in WORDS.items()}
    needed = layers(argv)
    for module in dict.fromkeys(module for module, _ in needed):  # each layer registers under the words asked
        importlib.import_module(module).register({w: parsers[w] for m, w in needed if m == module})
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    sys.exit(args.func(args) or 0)


if __name__ == "__main__":
    main()
