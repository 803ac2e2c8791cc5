"""Request checks without a server: field values, limits, image decoding, malformed wire bytes."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from servingkit import LEVELS, png_bytes

from serving.core.errors import InvalidInput
from serving.pyramid.engine import ModelInfo
from serving.core.images import decode_image, encode_png, encode_pngs
from serving.core.protos import pyramid_pb2 as pb
from serving.core.validation import Limits, MalformedRequest, lenient_deserializer
from serving.pyramid.validation import check_generate

INFO = ModelInfo(levels=LEVELS, class_names=("beach", "lake", "forest"), image_size=8)
LIMITS = Limits(max_samples=16, max_image_bytes=1000, max_image_pixels=10_000)


def request(**fields) -> pb.GenerateRequest:
    base = dict(image=b"\x89PNG...", level="conv3", num_samples=2, seed=5)
    base.update(fields)
    return pb.GenerateRequest(**base)


def test_valid_request_becomes_args():
    args = check_generate(request(seed=2**64 - 1), INFO, LIMITS)
    assert (args.levels, args.num_samples, args.seed, args.class_index) == ({"conv3": None}, 2, 2**64 - 1, None)


def test_class_override_by_index_and_by_name():
    assert check_generate(request(class_index=0), INFO, LIMITS).class_index == 0
    assert check_generate(request(class_name="forest"), INFO, LIMITS).class_index == 2


@pytest.mark.parametrize("fields, message", [
    (dict(image=b""), "image: empty"),
    (dict(image=b"x" * 1001), "image: 1001 bytes is over the limit of 1000 bytes"),
    (dict(level=""), "level: missing; expected one of conv1"),
    (dict(level="conv9"), "level: unknown level 'conv9'; expected one of conv1, conv2"),
    (dict(level="CONV1"), "level: unknown level 'CONV1'"),
    (dict(num_samples=-3), "num_samples: must be between 1 and 16 (0 = 1), got -3"),
    (dict(num_samples=17), "num_samples: must be between 1 and 16 (0 = 1), got 17"),
    (dict(class_index=-1), "class_index: -1 is out of range; the model has 3 classes (0..2)"),
    (dict(class_index=3), "class_index: 3 is out of range"),
    (dict(class_name="Forest"), "class_name: unknown class 'Forest'; expected one of beach, lake, forest"),
])
def test_bad_field_is_named_with_reason(fields, message):
    with pytest.raises(InvalidInput) as e:
        check_generate(request(**fields), INFO, LIMITS)
    assert message in str(e.value)


def test_all_bad_fields_are_reported_at_once():
    with pytest.raises(InvalidInput) as e:
        check_generate(request(image=b"", level="x", num_samples=-1, class_index=9), INFO, LIMITS)
    fields = [part.split(":")[0] for part in str(e.value).split("; ") if ":" in part]
    assert fields == ["image", "level", "num_samples", "class_index"]


def test_num_samples_left_at_zero_is_one():
    assert check_generate(request(num_samples=0), INFO, LIMITS).num_samples == 1


def test_decode_png_and_jpeg_to_rgb_arrays():
    png = decode_image(png_bytes(24, 16, (10, 20, 30)), 10**6, 10**6)
    assert png.shape == (16, 24, 3) and png.dtype == np.uint8 and tuple(png[0, 0]) == (10, 20, 30)
    jpeg = decode_image(png_bytes(24, 16, (200, 100, 50), fmt="JPEG"), 10**6, 10**6)
    assert jpeg.shape == (16, 24, 3)
    assert np.abs(jpeg.astype(int) - (200, 100, 50)).max() < 8  # lossy, but the same colour


@pytest.mark.parametrize("mode, color", [("L", 128), ("RGBA", (1, 2, 3, 4)), ("P", 5)])
def test_decode_converts_other_modes_to_rgb(mode, color):
    assert decode_image(png_bytes(5, 7, color, mode=mode), 10**6, 10**6).shape == (7, 5, 3)


def test_decode_rejects_bad_images_naming_the_field():
    good = png_bytes(30, 20)
    cases = {
        b"": "image: empty",
        b"definitely not an image": "image: not a PNG or JPEG image",
        png_bytes(8, 8, mode="RGB", fmt="GIF"): "image: not a PNG or JPEG image",
        good[: len(good) // 2]: "image: could not decode PNG data",
    }
    for data, message in cases.items():
        with pytest.raises(InvalidInput) as e:
            decode_image(data, 10**6, 10**6)
        assert message in str(e.value)


def test_decode_checks_limits_before_decoding():
    data = png_bytes(200, 100)
    with pytest.raises(InvalidInput, match=r"image: \d+ bytes is over the limit of 10 bytes"):
        decode_image(data, 10, 10**6)
    with pytest.raises(InvalidInput, match="image: 200x100 = 20000 pixels is over the limit of 19999 pixels"):
        decode_image(data, 10**6, 19_999)
    assert decode_image(data, len(data), 20_000).shape == (100, 200, 3)  # limits are inclusive


def test_png_encoding_is_lossless_and_deterministic():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    first, second = encode_pngs(images), encode_pngs(images.copy())
    assert first == second
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first[1]))), images[1])
    with pytest.raises(TypeError):
        encode_png(images[0].astype(np.float32))


def test_lenient_deserializer_parses_good_bytes():
    deserialize = lenient_deserializer(pb.GenerateRequest)
    message = deserialize(request(class_name="lake").SerializeToString())
    assert isinstance(message, pb.GenerateRequest) and message.class_name == "lake"


def test_lenient_deserializer_flags_unparseable_bytes():
    result = lenient_deserializer(pb.GenerateRequest)(b"\xff\xff\xff")
    assert isinstance(result, MalformedRequest)
    assert result.reason == "request: 3 bytes do not parse as a semgen.v1.GenerateRequest message"


@pytest.mark.parametrize("payload, message", [
    (b"\x08\x05", "image: wrong wire type (varint) for a bytes field"),  # field 1 sent as an integer
    (b"\x11" + bytes(8), "level: wrong wire type (fixed64) for a string field"),
    (b"\x25\x00\x00\x00\x00", "seed: wrong wire type (fixed32) for a uint64 field"),
])
def test_lenient_deserializer_flags_wrong_typed_fields(payload, message):
    result = lenient_deserializer(pb.GenerateRequest)(payload)
    assert isinstance(result, MalformedRequest) and result.reason == message


def test_lenient_deserializer_ignores_fields_from_newer_clients():
    newer = request().SerializeToString() + b"\xf8\x06\x01"  # field 111 (varint), unknown to us
    assert isinstance(lenient_deserializer(pb.GenerateRequest)(newer), pb.GenerateRequest)


def test_decoded_size_reads_the_header_not_the_file_size():
    import io as _io

    from PIL import Image as _Image

    from serving.core.images import SMALL_WORK, decoded_size

    buf = _io.BytesIO()
    _Image.new("RGB", (2048, 2048)).save(buf, format="PNG")  # a small file that inflates to 12 MB
    assert len(buf.getvalue()) < SMALL_WORK and decoded_size(buf.getvalue()) == 2048 * 2048 * 3
    assert decoded_size(b"not an image") > SMALL_WORK  # decoded (and refused) off the event loop


def png_16bit(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel PNG written by hand (PIL writes 16-bit grayscale but not 48-bit RGB)."""
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels.reshape(height, -1))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_images_keep_their_brightness(channels):
    """16-bit grayscale was converted by clipping at 255 (89 % of a photo's pixels went white); 16-bit
    grayscale and RGB now decode to the 8-bit image of the same brightness."""
    ramp = np.linspace(0, 1, 16 * 16 * channels).reshape(16, 16, channels).squeeze()
    decoded = decode_image(png_16bit(np.round(ramp * 65535).astype(np.uint16)), 100_000, 10_000)
    expected = np.round(ramp * 255).astype(int)
    expected = np.repeat(expected[..., None], 3, axis=2) if channels == 1 else expected
    assert decoded.shape == (16, 16, 3) and np.abs(decoded.astype(int) - expected).max() <= 1


def test_samples_of_a_large_generator_are_bounded_by_working_memory_before_any_work():
    """A count limit alone does not bound memory: 16 samples of a 1024 px generator with a head need gigabytes.
    The estimate per sample comes from the engine (SemanticsInfo.sample_bytes); over the limit is INVALID_ARGUMENT
    naming the field, the size and how many fit."""
    from serving.core.protos import semantics_pb2 as spb
    from serving.semantics.engine import SemanticsInfo
    from serving.semantics.validation import check_sample, check_segment

    mib = 1024 * 1024
    info = SemanticsInfo(image_size=1024, latent_shape=(18, 4), heads={}, sample_bytes=300 * mib)
    info.heads["lse"] = None  # a head the bundle has (its summary is not read here)
    limits = Limits(max_request_working_bytes=1024 * mib)
    assert check_sample(spb.SampleRequest(seeds=[1, 2, 3], head="lse"), info, limits).seeds == [1, 2, 3]  # 900 MiB
    assert len(check_sample(spb.SampleRequest(seeds=range(16)), info, limits).seeds) == 16  # images alone: 192 MiB
    with pytest.raises(InvalidInput) as seeds:
        check_sample(spb.SampleRequest(seeds=[1, 2, 3, 4], head="lse"), info, limits)
    assert str(seeds.value) == ("seeds: 4 samples of 1024 px need about 1200 MiB of working memory, over the limit of "
                                "1024 MiB per request (--max-request-working-bytes); ask for at most 3")
    latents = spb.Latents(shape=[4, 4], values=[0.0] * 16)
    with pytest.raises(InvalidInput, match="^latents: 4 samples of 1024 px"):
        check_segment(spb.SegmentRequest(latents=latents, head="lse"), info, limits)
