"""Limits on what FitHead stores (issue 17): class names, how many user heads and their bytes on disk, a
ListHeads reply that stays under the message limit, and FitHead's refusals counted by their code."""

import io
import logging

import grpc
import pytest
from PIL import Image
from servingkit import in_process_semantics_server, in_thread, sample_value, wait_until

from serving.core.protos import semantics_pb2 as pb
from serving.options import ServeOptions
from serving.semantics.client import SemanticsClient
from serving.semantics.validation import MAX_CLASS_NAME_CHARS, MAX_CLASSES, MAX_HEAD_INFO_BYTES

IMAGE_SIZE, W_DIM = 16, 8  # what make_random_semantics_bundle(image_size=16) builds
FIT = "semgen.v1.SemanticsService/FitHead"
LIST = "semgen.v1.SemanticsService/ListHeads"
EXHAUSTED, INVALID = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT
ONE = pb.Latents(shape=[1, W_DIM], values=[0.0] * W_DIM)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from random_bundles import make_random_semantics_bundle

    return make_random_semantics_bundle(tmp_path_factory.mktemp("bundle"), image_size=IMAGE_SIZE)


def mask() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0).save(buf, format="PNG")
    return buf.getvalue()


def fit(client, name, class_names=("a", "b"), replace=False):
    return client.fit_head(name=name, latents=ONE, masks=[mask()], class_names=list(class_names), seed=1,
                           iterations=1, replace=replace)


def refused(call) -> tuple:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def requests(server, method, code) -> float:
    return sample_value(server.metrics, "semgen_requests_total", method=method, code=code)


def saved(heads_dir) -> list[str]:
    """What is in the heads folder, staging folders included."""
    return sorted(p.name for p in heads_dir.iterdir())


def test_class_names_are_bounded_and_quoted_cut_short(bundle, tmp_path):
    long, control = "x" * (MAX_CLASS_NAME_CHARS + 1), "sky\nline"
    with in_thread(in_process_semantics_server(bundle, tmp_path / "heads")) as s:
        with SemanticsClient(s.address, timeout=30) as client:
            too_long = refused(lambda: fit(client, "long", ["a", long]))
            unprintable = refused(lambda: fit(client, "ctl", [control, "b"]))
            many = refused(lambda: fit(client, "many", [f"{i}" + "y" * 100 for i in range(8)]))
            at_limit = fit(client, "at-limit", ["z" * MAX_CLASS_NAME_CHARS, "b"])
            listed = [h.name for h in client.list_heads()]
    assert too_long == (INVALID, f"class_names[1]: '{'x' * 40}…' is 65 characters; use at most 64")
    assert unprintable == (INVALID, "class_names[0]: 'sky\\nline' contains a control or other non-printable "
                                    "character; use printable characters and plain spaces")
    code, details = many
    assert code == INVALID and details.count("class_names[") == 5
    assert details.startswith(f"class_names[0]: '0{'y' * 39}…' is 101 characters")
    assert details.endswith("; class_names: 3 more names with problems")
    assert at_limit.class_names[0] == "z" * MAX_CLASS_NAME_CHARS
    assert "long" not in listed and "ctl" not in listed and "at-limit" in listed
    assert requests(s, FIT, "INVALID_ARGUMENT") == 3 and requests(s, FIT, "OK") == 1


def test_head_count_limit_refuses_new_heads_but_not_replacing(bundle, tmp_path):
    heads = tmp_path / "heads"
    with in_thread(in_process_semantics_server(bundle, heads, max_user_heads=2)) as s:
        with SemanticsClient(s.address, timeout=30) as client:
            fit(client, "one")
            fit(client, "two")
            third = refused(lambda: fit(client, "three"))
            replaced = fit(client, "two", ["a", "b", "c"], replace=True)  # replacing does not count twice
            listed = {h.name: tuple(h.class_names) for h in client.list_heads()}
        assert wait_until(lambda: sample_value(s.metrics, "semgen_jobs_total", op="fit_head", outcome="rejected") == 1)
    assert third == (EXHAUSTED, "heads: the server is at its limit of 2 user heads (--max-user-heads); fit it under "
                                "the name of an existing user head with replace set, or have one removed from the "
                                "heads folder")
    assert tuple(replaced.class_names) == ("a", "b", "c") and listed["two"] == ("a", "b", "c")
    assert "three" not in listed and saved(heads) == ["one", "two"]
    assert requests(s, FIT, "RESOURCE_EXHAUSTED") == 1 and requests(s, FIT, "OK") == 3


def test_heads_bytes_limit_refuses_what_does_not_fit_and_keeps_heads_over_it_on_restart(bundle, tmp_path, caplog):
    heads = tmp_path / "heads"
    with in_thread(in_process_semantics_server(bundle, heads)) as s:
        with SemanticsClient(s.address, timeout=30) as client:
            fit(client, "one")
    size = sum(f.stat().st_size for f in (heads / "one").iterdir())  # every head here is the same size
    with in_thread(in_process_semantics_server(bundle, heads, max_heads_bytes=2 * size + size // 2)) as s:
        with SemanticsClient(s.address, timeout=30) as client:
            fit(client, "two")
            code, details = refused(lambda: fit(client, "three"))
            replaced = fit(client, "two", ["c", "d"], replace=True)  # its old bytes are freed
            listed = {h.name: tuple(h.class_names) for h in client.list_heads()}
    assert code == EXHAUSTED
    assert details == (f"heads: head 'three' takes {size} bytes and the other user heads {2 * size}, over the "
                       f"server's limit of {2 * size + size // 2} bytes (--max-heads-bytes); fit it under the name "
                       f"of an existing user head with replace set, or have one removed from the heads folder")
    assert tuple(replaced.class_names) == ("c", "d") and listed["two"] == ("c", "d") and "three" not in listed
    assert saved(heads) == ["one", "two"]  # nothing of the refused head, no staging folder left
    assert requests(s, FIT, "RESOURCE_EXHAUSTED") == 1

    # A server with lower limits than the heads on disk serves them all, says so, and adds no new head.
    with caplog.at_level(logging.WARNING, logger="serving.semantics"):
        with in_thread(in_process_semantics_server(bundle, heads, max_user_heads=1, max_heads_bytes=size)) as s:
            with SemanticsClient(s.address, timeout=30) as client:
                listed = {h.name for h in client.list_heads()}
                code, details = refused(lambda: fit(client, "four"))
    assert {"one", "two"} <= listed and code == EXHAUSTED and "(--max-user-heads)" in details
    assert f"2 heads (limit 1) and {2 * size} bytes (limit {size})" in caplog.text
    assert saved(heads) == ["one", "two"]


def test_list_heads_of_the_most_and_largest_user_heads_fits_the_message_limit():
    opts = ServeOptions()
    opts.check()
    widest = "\U0001F600" * MAX_CLASS_NAME_CHARS  # 4 UTF-8 bytes a character, and printable
    assert widest.isprintable()
    head = pb.HeadInfo(name="h" * 64, kind="segmenter", class_names=[widest] * MAX_CLASSES, bundled=False,
                       shots=2**31 - 1)
    one = pb.ListHeadsResponse(heads=[head]).ByteSize()
    assert one <= MAX_HEAD_INFO_BYTES
    reply = pb.ListHeadsResponse(heads=[head] * opts.max_user_heads).ByteSize()
    assert reply <= opts.max_user_heads * MAX_HEAD_INFO_BYTES <= opts.max_message_bytes // 2
    with pytest.raises(ValueError, match="--max-user-heads: 1000 user heads can make a ListHeads reply"):
        ServeOptions(max_user_heads=1000).check()


def test_a_reply_over_the_message_limit_is_counted_as_resource_exhausted(bundle, tmp_path):
    wide = [f"{i:03d}" + "c" * (MAX_CLASS_NAME_CHARS - 3) for i in range(MAX_CLASSES)]  # a ~17 KB HeadInfo
    options = dict(max_message_bytes=24_000, max_image_bytes=8_000)  # one such head fits a reply, two do not
    with in_thread(in_process_semantics_server(bundle, tmp_path / "heads", **options)) as s:
        with SemanticsClient(s.address, timeout=30) as client:
            fit(client, "wide-1", wide)
            assert len(client.list_heads()) > 1
            fit(client, "wide-2", wide)
            code, details = refused(client.list_heads)
    assert code == EXHAUSTED and details.startswith("response: ") and "(--max-message-bytes)" in details
    assert requests(s, LIST, "RESOURCE_EXHAUSTED") == 1 and requests(s, LIST, "OK") == 1
