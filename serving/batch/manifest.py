"""A batch job's inputs: a JSONL manifest (one request per line) or a folder of images plus one request template.

    {"id": "beach-1", "rpc": "Generate", "image": "refs/beach.png", "level": "conv5", "num_samples": 4, "seed": 0}
    {"rpc": "Repaint", "image": "refs/lake.png", "region": {"png": "masks/sky.png"}, "level": "conv4"}

Every line is the RPC's name and its request's fields in the proto's JSON mapping, except that bytes fields
(images, masks) hold a file path, relative to the manifest's folder. `id` is optional: without it an item is
named by the hash of its request. Every line is checked (JSON, RPC, fields, files, repeated ids) before any
work starts, and all the bad lines are reported with their numbers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from serving.core.protos import higan_pb2, imagine_pb2, pyramid_pb2, semantics_pb2


@dataclass(frozen=True)
class Rpc:
    method: str  # the gRPC method path
    request: type  # the request message class
    reply: type  # the reply message class (a stream's event for a job)
    stream: bool  # an iterative job: its reply is the `result` of its last event


def _rpcs() -> dict[str, Rpc]:
    p, s, i, h = "/semgen.v1.PyramidService/", "/semgen.v1.SemanticsService/", "/semgen.v1.ImagineService/", \
        "/semgen.v1.HiganService/"
    return {
        "Generate": Rpc(p + "Generate", pyramid_pb2.GenerateRequest, pyramid_pb2.GenerateResponse, False),
        "Repaint": Rpc(p + "Repaint", pyramid_pb2.RepaintRequest, pyramid_pb2.GenerateResponse, False),
        "Composite": Rpc(p + "Composite", pyramid_pb2.CompositeRequest, pyramid_pb2.GenerateResponse, False),
        "Sample": Rpc(s + "Sample", semantics_pb2.SampleRequest, semantics_pb2.SampleResponse, False),
        "Segment": Rpc(s + "Segment", semantics_pb2.SegmentRequest, semantics_pb2.SegmentResponse, False),
        "SampleConditional": Rpc(s + "SampleConditional", semantics_pb2.SampleConditionalRequest,
                                 semantics_pb2.JobEvent, True),
        "EditSemantics": Rpc(s + "EditSemantics", semantics_pb2.EditSemanticsRequest, semantics_pb2.JobEvent, True),
        "Imagine": Rpc(i + "Imagine", imagine_pb2.ImagineRequest, imagine_pb2.ImagineEvent, True),
        "Manipulate": Rpc(h + "Manipulate", higan_pb2.ManipulateRequest, higan_pb2.ManipulateResponse, False),
    }


RPCS = _rpcs()
# the RPCs that make one image input into outputs: what a folder of images can be run through, and the field
# each image goes to
FOLDER_OPS = {"generate": ("Generate", "image"), "repaint": ("Repaint", "image"),
              "composite": ("Composite", "image"), "imagine": ("Imagine", "reference_png")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ManifestError(ValueError):
    """Every bad line of a manifest, one per line of the message."""

    def __init__(self, source: str, problems: list[str]):
        shown = problems[:50]
        more = f"\n… and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"{source}: {len(problems)} bad line(s):\n" + "\n".join(shown) + more)
        self.problems = problems


@dataclass(frozen=True)
class Item:
    """One request of the job. `fields` are the line's fields with file paths resolved; `key` names its outputs."""

    line: int
    rpc: str
    key: str
    fields: dict

    def request(self):
        """The request message, its files read now (so a long job holds one item's images at a time)."""
        return build_request(RPCS[self.rpc].request, self.fields)

    @property
    def seed(self) -> int | None:
        seed = self.fields.get("seed")
        return seed if isinstance(seed, int) else None


def build_request(cls: type, fields: dict):
    return json_format.ParseDict(_map_paths(cls.DESCRIPTOR, fields, _read_b64), cls())


def _map_paths(descriptor, fields: dict, leaf, prefix: str = "") -> dict:
    """The fields with `leaf(path, field name)` in place of every bytes field's path, nested messages included;
    ValueError naming a field the message does not have."""
    out = dict(fields)
    for name, value in fields.items():
        field = descriptor.fields_by_name.get(name) or _by_json_name(descriptor, name)
        if field is None:
            raise ValueError(f"{prefix}{name}: no such field in {descriptor.name}; expected one of "
                             f"{', '.join(f.name for f in descriptor.fields)}")
        if field.type == FieldDescriptor.TYPE_BYTES:
            out[name] = [leaf(v, name) for v in value] if isinstance(value, list) else leaf(value, name)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            sub = field.message_type
            if isinstance(value, list):
                out[name] = [_map_paths(sub, v, leaf, f"{prefix}{name}[{i}].") if isinstance(v, dict) else v
                             for i, v in enumerate(value)]
            elif isinstance(value, dict):
                out[name] = _map_paths(sub, value, leaf, f"{prefix}{name}.")
    return out


def _by_json_name(descriptor, name: str):
    return next((f for f in descriptor.fields if f.json_name == name), None)


def _read_b64(path, field: str) -> str:
    """A bytes field's file, as the JSON mapping wants it (base64)."""
    if not isinstance(path, str):
        raise ValueError(f"{field}: expected a file path, got {type(path).__name__}")
    try:
        return base64.b64encode(Path(path).read_bytes()).decode()
    except OSError as e:
        raise ValueError(f"{field}: cannot read {path!r}: {e.strerror or e}") from None


def _absolute(path, base: Path):
    """A path relative to the manifest's folder, made absolute."""
    return str((base / path).resolve()) if isinstance(path, str) else path


def request_key(rpc: str, request) -> str:
    """The content hash that names an item without an id: same RPC + same request bytes = same key."""
    digest = hashlib.sha256(rpc.encode() + b"\0" + request.SerializeToString(deterministic=True)).hexdigest()
    return f"{rpc.lower()}-{digest[:16]}"


def _item(line: int, record, base: Path) -> Item:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    fields = dict(record)
    rpc = fields.pop("rpc", None)
    if rpc not in RPCS:
        raise ValueError(f"rpc: {'missing' if rpc is None else f'unknown RPC {rpc!r}'}; expected one of "
                         f"{', '.join(RPCS)}")
    item_id = fields.pop("id", None)
    if item_id is not None and not (isinstance(item_id, str) and _ID.fullmatch(item_id)):
        raise ValueError(f"id: {item_id!r} is not a name of 1-128 letters, digits, '.', '_' or '-' "
                         "(it names the output files)")
    fields = _map_paths(RPCS[rpc].request.DESCRIPTOR, fields, lambda path, _field: _absolute(path, base))
    try:
        request = build_request(RPCS[rpc].request, fields)
    except json_format.ParseError as e:
        raise ValueError(str(e).splitlines()[0].replace("Failed to parse ", "").replace(" field: ", ": ")) from None
    return Item(line, rpc, item_id or request_key(rpc, request), fields)


def read_manifest(path: str | Path) -> list[Item]:
    """The manifest's items, in order. Raises ManifestError naming every bad line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(str(path), [f"cannot read: {e}"]) from None
    items, problems, seen = [], [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            item = _item(number, record, path.parent)
        except json.JSONDecodeError as e:
            problems.append(f"line {number}: not JSON: {e.msg} at column {e.colno}")
            continue
        except ValueError as e:
            problems.append(f"line {number}: {e}")
            continue
        if item.key in seen:
            what = f"id: {item.key!r} repeats" if "id" in record else "the same request as"
            problems.append(f"line {number}: {what} line {seen[item.key]}")
            continue
        seen[item.key] = number
        items.append(item)
    if problems:
        raise ManifestError(str(path), problems)
    if not items:
        raise ManifestError(str(path), ["no requests (the manifest is empty)"])
    return items


def folder_items(folder: str | Path, op: str, template: dict) -> list[Item]:
    """One item per image in `folder` (sorted by name, id = the file's stem): the `op` RPC with the template's
    fields and the image in the RPC's image field."""
    folder = Path(folder)
    if op not in FOLDER_OPS:
        raise ManifestError(str(folder), [f"op: unknown {op!r}; expected one of {', '.join(FOLDER_OPS)}"])
    if not folder.is_dir():
        raise ManifestError(str(folder), ["not a folder"])
    rpc, image_field = FOLDER_OPS[op]
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ManifestError(str(folder), [f"no images ({', '.join(IMAGE_SUFFIXES)})"])
    items, problems = [], []
    for number, image in enumerate(images, start=1):
        record = {"rpc": rpc, "id": _ID.fullmatch(image.stem) and image.stem or None, **template,
                  image_field: str(image)}
        if record["id"] is None:
            del record["id"]
        try:
            items.append(_item(number, record, Path.cwd()))
        except ValueError as e:
            problems.append(f"{image.name}: {e}")
    if problems:
        raise ManifestError(str(folder), problems)
    return items
