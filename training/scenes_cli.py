"""`semgen scenes ...`: the scene world from the command line. Only numpy and PIL are loaded (no torch), so a
first `semgen scenes render` takes about a second."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from semgen.options import command, opt, subcommands, write_options


@dataclass(frozen=True, kw_only=True)
class ScenesPreview:
    out: str = opt("reports/scenes.png", "the picture (its options go beside it)")
    n: int = opt(8, "scenes")
    size: int = opt(64, "pixels")


@dataclass(frozen=True, kw_only=True)
class ScenesRender:
    out: str = opt("scene.png", "the PNG to write")
    seed: int = opt(0, "the scene's seed: the same seed, category, size and rendition give the same pixels")
    category: str = opt("random", "beach, lake, snowy_mountains, desert, forest, field, city_street, night_city; "
                                  "random: the seed picks one")
    rendition: str = opt("photo", "photo, line_drawing, grayscale or painting")
    size: int = opt(128, "width and height in pixels (the served models take any size: centre square, resized to 64)")
    labels: str = opt("", "also write the per-pixel class map here (a PNG of class indices; semgen.data.scenes.CLASSES)")


def scenes_render(o: ScenesRender) -> int:
    from PIL import Image

    from semgen.data.scenes import CATEGORIES, RENDITIONS, render_scene

    if o.category != "random" and o.category not in CATEGORIES:
        print(f"error: --category must be random or one of {', '.join(CATEGORIES)}, got {o.category!r}", file=sys.stderr)
        return 2
    if o.rendition not in RENDITIONS or not 16 <= o.size <= 4096 or o.seed < 0:
        print(f"error: --rendition must be one of {', '.join(RENDITIONS)}, --size in 16..4096, --seed >= 0",
              file=sys.stderr)
        return 2
    scene = render_scene(o.seed, o.size, None if o.category == "random" else o.category, o.rendition)
    out = Path(o.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.image).save(out)
    if o.labels:
        Image.fromarray(scene.labels).save(o.labels)
    print(f"wrote {out} ({o.size}x{o.size} {o.rendition}, {CATEGORIES[scene.category]}, seed {o.seed})")
    return 0


def scenes_preview(o: ScenesPreview) -> int:
    from semgen.data.preview import write_preview

    path = write_preview(o.out, n=o.n, size=o.size)
    write_options(o, path.parent, f"{path.stem}_options")
    print(f"wrote {path}")
    return 0


def register(parsers: dict) -> None:
    """`semgen scenes ...` on the dispatcher's parser (semgen_cli.py)."""
    scenes = subcommands(parsers["scenes"])
    command(scenes.add_parser("preview", help="grid of scenes, label maps and renditions"), ScenesPreview,
            scenes_preview)
    command(scenes.add_parser("render", help="one scene as a PNG (a reference image for the first calls)"),
            ScenesRender, scenes_render)
