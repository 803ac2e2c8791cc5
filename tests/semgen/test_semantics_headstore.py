"""HeadStore: user heads on disk beside the bundle's, and the rules for their names."""

import threading

import pytest
import torch

from semgen.checkpoints import save_checkpoint
from semgen.networks.heads import LinearSemanticExtractor
from semgen.pipelines.forward import Op
from semgen.pipelines.semantics import HeadExists, HeadLimit, HeadStore

LAYERS = (4, 4)


def head(seed: int = 0) -> LinearSemanticExtractor:
    torch.manual_seed(seed)
    return LinearSemanticExtractor(LAYERS, 3, ("a", "b", "c"))


@pytest.fixture
def store(tmp_path):
    for name in ("lse", "nse1"):
        save_checkpoint(tmp_path / "models" / "heads" / name, head(), head().config)
    for name, shots in (("water-3", 3), ("nse1", 8)):  # a user head may replace a bundled one
        save_checkpoint(tmp_path / "user" / name, head(), head().config, training={"shots": shots})
    return HeadStore.open(tmp_path / "user", tmp_path / "models")


def test_open_lists_bundled_and_user_heads(store):
    assert store.bundled == {"lse"} and store.user == {"water-3": 3, "nse1": 8}
    assert store.names() == ["lse", "nse1", "water-3"]
    assert "lse" in store and "nse1" in store and "other" not in store
    assert store.is_bundled("lse") and not store.is_bundled("nse1")
    assert store.shots("water-3") == 3 and store.shots("lse") == 0
    assert [name for name, _ in store.load()] == ["nse1", "water-3"]


def test_name_rules(store):
    assert store.name_problem("grass-2") is None and store.name_problem("nse1") is None  # user heads: replaceable
    assert store.name_problem("") == "name: missing; give the new head a name"
    assert store.name_problem("Grass").startswith("name: 'Grass' is not a valid head name")
    assert store.name_problem("a" * 65).startswith("name: ")
    assert store.name_problem("segmenter").startswith("name: 'segmenter' is reserved")
    assert store.name_problem("lse") == "name: 'lse' is a bundled head and cannot be replaced; choose another name"
    with pytest.raises(ValueError, match="^name: 'x y' is not a valid head name"):
        store.check_name("x y")


def test_reserve_refuses_a_taken_name_unless_replacing_and_never_twice(store):
    with pytest.raises(HeadExists, match="^name: a head named 'water-3' exists; set replace"):
        with store.reserve("water-3", replace=False):
            pass
    with store.reserve("water-3", replace=True):
        with pytest.raises(HeadExists, match="^name: a head named 'water-3' is being fitted now"):
            with store.reserve("water-3", replace=True):
                pass
        seen = []  # another thread is refused too
        thread = threading.Thread(target=lambda: seen.append(_try_reserve(store, "water-3")))
        thread.start()
        thread.join()
        assert seen == [False]
    with store.reserve("water-3", replace=True):  # released
        pass


def _try_reserve(store, name) -> bool:
    try:
        with store.reserve(name, replace=True):
            return True
    except HeadExists:
        return False


def test_save_writes_a_loadable_head_and_remembers_its_shots(store):
    fitted = head(seed=3)
    with store.reserve("grass-2", replace=False):
        path = store.save("grass-2", fitted, training={"shots": 2, "seed": 0})
    assert path == store.folder / "grass-2" and store.shots("grass-2") == 2
    loaded = dict(store.load())["grass-2"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), fitted.state_dict().values()))
    assert store.names() == ["grass-2", "lse", "nse1", "water-3"]
    with pytest.raises(ValueError, match="^name: 'lse' is a bundled head"):
        store.save("lse", fitted)
    assert not (store.folder / "lse").exists()


def test_limits_count_fits_in_progress_and_a_replaced_head_once(store, tmp_path):
    size = sum(f.stat().st_size for f in (store.folder / "water-3").iterdir())  # each head here: the same size
    limited = HeadStore.open(store.folder, tmp_path / "models", max_heads=3, max_bytes=3 * size)
    assert limited.over_limits() is None
    with limited.reserve("new-1", replace=False):  # a fit in progress holds a place
        with pytest.raises(HeadLimit, match=r"^heads: the server is at its limit of 3 user heads"):
            with limited.reserve("new-2", replace=False):
                pass
        with limited.reserve("water-3", replace=True):  # replacing is not a new head, and its bytes count once
            limited.save("water-3", head(seed=4), training={"shots": 1})
        limited.save("new-1", head(seed=5), training={"shots": 2})
    assert limited.user == {"water-3": 1, "nse1": 8, "new-1": 2}
    full = HeadStore.open(store.folder, tmp_path / "models", max_bytes=3 * size)
    with pytest.raises(HeadLimit, match=rf"^heads: the other user heads take {3 * size} bytes, the server's limit"):
        with full.reserve("new-2", replace=False):
            pass
    (store.folder / ".half.saving").mkdir()  # what a save cut short leaves: not a head
    (store.folder / ".half.saving" / "config.json").write_text("{}")
    over = HeadStore.open(store.folder, tmp_path / "models", max_heads=2, max_bytes=size)
    assert sorted(over.user) == [name for name, _ in over.load()] == ["new-1", "nse1", "water-3"]
    assert over.over_limits() == f"3 heads (limit 2) and {3 * size} bytes (limit {size})"


def test_op_names_are_strings():
    assert Op.SAMPLE == "sample" and str(Op.SAMPLE) == f"{Op.SAMPLE}" == "sample"
    assert {Op.GENERATE: 1}["generate"] == 1
