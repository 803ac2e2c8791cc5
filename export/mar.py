"""TorchServe model archives (.mar): a handler, its files and a model-config YAML in one zip.

`build_mar` runs torch-model-archiver 0.12. What TorchServe makes of the archive at runtime:

* The archive is unpacked into <java.io.tmpdir>/models/<hash>/, which is
  `context.system_properties["model_dir"]`, the worker's cwd and the head of its PYTHONPATH.
* The handler file lands at the top and is imported by its file stem, so the stem must not shadow
  an installed package (no `serving.py`, `semgen.py`, ...).
* Extra files land at the top by base name. For a directory the archiver copies its *contents* to
  the top (`weights/a.bin` -> `a.bin`); we hand it a symlink to the directory inside a staging
  folder instead, so `weights/a.bin` stays `<model_dir>/weights/a.bin`.
* The YAML becomes `context.model_yaml_config` (a dict). TorchServe reads minWorkers, maxWorkers,
  batchSize, maxBatchDelay (ms), responseTimeout (s) and ignores other keys; our own settings
  go under `handler:`, which the handler reads.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from export.onnx import ensure_exported
from semgen.bundle import TORCHSERVE_MODELS, Bundle

TORCHSERVE_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")


def build_mar(
    name: str,
    handler_path: Path,
    out_dir: Path,
    extra_files: list[Path],
    config: dict,
    version: str = "1.0",
) -> Path:
    """Write <out_dir>/<name>-model-config.yaml and <out_dir>/<name>.mar; return the .mar path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):  # the archiver's rule for names
        raise ValueError(f"bad model name {name!r}: letters, digits, '_', '-', '.'")
    handler_path = Path(handler_path).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    extra_files = [Path(p).resolve() for p in extra_files]
    for path in [handler_path, *extra_files]:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
    odd = [str(p) for p in extra_files if any(c in str(p) for c in ",*?[")]
    if odd:  # --extra-files is comma separated and globbed
        raise ValueError(f"extra file paths must not contain ',', '*', '?' or '[': {odd}")
    names = [handler_path.name, *(p.name for p in extra_files)]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:  # the archiver would silently let the last one win
        raise ValueError(f"same names would overwrite each other in the .mar: {clashes}")

    config_path = out_dir / f"{name}-model-config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    with tempfile.TemporaryDirectory(prefix="mar-stage-") as stage:
        extra = [str(p) for p in extra_files if p.is_file()]
        dirs = [p for p in extra_files if p.is_dir()]
        if dirs:
            # the archiver copies the *contents* of a listed directory; listing a folder that holds
            # links to our directories keeps their names (copytree follows the links)
            for d in dirs:
                (Path(stage) / d.name).symlink_to(d, target_is_directory=True)
            extra.append(stage)
        cmd = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", name,
            "--version", version,
            "--handler", str(handler_path),
            "--config-file", str(config_path),
            "--export-path", str(out_dir),
            "--archive-format", "default",
            "--force",
        ]
        if extra:
            cmd += ["--extra-files", ",".join(extra)]
        result = subprocess.run(cmd, capture_output=True, text=True)

    mar = out_dir / f"{name}.mar"
    if result.returncode != 0 or not mar.is_file():
        raise RuntimeError(
            f"torch-model-archiver failed for {name} (exit {result.returncode}):\n"
            f"{(result.stderr or result.stdout).strip()[-4000:]}"
        )
    return mar


# ---- semgen's own archives ------------------------------------------------------------------

def export_mars(handler: str | Path, models: str | Path = "artifacts", out: str | Path = "exports/mar",
                onnx_cache: str | Path = "var/onnx", batch_size: int = 8, max_batch_delay_ms: float = 5,
                workers: int = 1, ort_threads: int = 2, response_timeout: int = 600) -> dict:
    """One .mar per semgen model the bundle has (see TORCHSERVE_MODELS), each with `handler`, the
    bundle folders and ONNX graphs it needs (bundle/, onnx/ in the unpacked archive) and a
    model-config.yaml. Forward models are batched (batchSize, maxBatchDelay); job models run one
    request at a time. Returns {"<name>.mar": path, ...} and writes it to <out>/mars.json."""
    models, out = Path(models), Path(out)
    graphs = ensure_exported(models, onnx_cache)
    report = {}
    for name, (folders, onnx_names, batched) in TORCHSERVE_MODELS.items():
        if not (models / folders[0]).exists():
            continue  # the bundle does not have this model
        with tempfile.TemporaryDirectory(prefix=f"mar-{name}-") as stage:
            stage = Path(stage)
            for sub in ("bundle", "onnx", "heads"):
                (stage / sub).mkdir()
            for folder in folders:
                if (models / folder).exists():
                    (stage / "bundle" / folder).symlink_to((models / folder).resolve(), target_is_directory=True)
            for graph in onnx_names:
                if (graphs / f"{graph}.onnx").exists():  # a bundle without heads/lse has no synthesis_lse
                    (stage / "onnx" / f"{graph}.onnx").symlink_to((graphs / f"{graph}.onnx").resolve())
            config = {"minWorkers": workers, "maxWorkers": workers,
                      "batchSize": batch_size if batched else 1,
                      "maxBatchDelay": round(max_batch_delay_ms) if batched else 0,
                      "responseTimeout": response_timeout,
                      "handler": {"service": name, "ort_threads": ort_threads}}
            mar = build_mar(name, handler, out, [stage / "bundle", stage / "onnx", stage / "heads"], config)
        report[f"{name}.mar"] = str(mar)
    report["fingerprint"] = Bundle(models).fingerprint()
    report["settings"] = dict(batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms, workers=workers,
                              ort_threads=ort_threads, response_timeout=response_timeout)
    (out / "mars.json").write_text(json.dumps(report, indent=2))
    return report


def ensure_mars(handler: str | Path, models: str | Path, store: str | Path, onnx_cache: str | Path = "var/onnx",
                **settings) -> Path:
    """The archives for the bundle, handler and settings in <store>/<key>/ (what `semgen serve --engine
    torchserve` opens), built unless already there."""
    folder = Bundle(models).mar_store_dir(store, handler, settings)
    if not (folder / "mars.json").exists():
        export_mars(handler, models, folder, onnx_cache, **settings)
    return folder
