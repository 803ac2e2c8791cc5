"""NVlabs network pickles read as data (semgen/nvlabs_pickle.py): the shared fixture made by NVlabs' own code, and
pickles that try to run code."""

import os
import pickle
import sys
import types
from pathlib import Path

import pytest

from semgen.nvlabs_pickle import PersistentObject, RefusedPickle, read_network_pickle

FIXTURE = Path(__file__).parent / "fixtures" / "stylegan2" / "G64.pkl"


def test_the_nvlabs_fixture_reads_as_data_without_its_source():
    networks = read_network_pickle(FIXTURE)
    assert {"G_ema", "G", "D"} <= set(networks)
    g = networks["G_ema"]
    assert isinstance(g, PersistentObject) and g.class_name == "Generator"
    assert g.init_kwargs["z_dim"] == 64 and g.init_kwargs["img_resolution"] == 64
    assert g.init_kwargs["synthesis_kwargs"]["channel_max"] == 128
    state = g.state_dict()
    assert state["mapping.w_avg"].shape == (64,) and state["synthesis.b4.const"].shape == (128, 4, 4)
    assert state["synthesis.b64.torgb.weight"].shape == (3, 32, 1, 1)
    assert sum(k.startswith("mapping.fc") for k in state) == 8  # 4 layers, weight + bias
    assert g.modules["synthesis"].init_kwargs["channel_base"] == 2048
    assert "torch_utils" not in sys.modules  # the embedded module source was never imported or run


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused_naming_the_global(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": RunsCode(marker)}))
    with pytest.raises(RefusedPickle, match=r"posix\.system: not allowed in a network pickle.*nothing ran"):
        read_network_pickle(path)
    assert not marker.exists()


def test_the_embedded_module_source_is_never_run(tmp_path, monkeypatch):
    """A persistent object whose module source would write a file: read as data, the source not run."""
    marker = tmp_path / "ran"
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what NVlabs' loader does: exec the source (never called here)
        exec(meta["module_src"])

    _reconstruct_persistent_obj.__module__ = persistence.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)

    class Persistent:
        def __reduce__(self):
            meta = {"type": "class", "version": 6, "class_name": "Generator",
                    "module_src": f"open({str(marker)!r}, 'w').write('ran')",
                    "state": {"_init_args": (), "_init_kwargs": {"z_dim": 8}, "_parameters": {}, "_buffers": {},
                              "_modules": {}, "w_dim": 8}}
            return _reconstruct_persistent_obj, (meta,)

    path = tmp_path / "net.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Persistent()}))
    for name in ("torch_utils.persistence", "torch_utils"):  # reading must not need them
        monkeypatch.delitem(sys.modules, name)
    g = read_network_pickle(path)["G_ema"]
    assert (g.class_name, g.init_kwargs, g.attributes) == ("Generator", {"z_dim": 8}, {"w_dim": 8})
    assert not marker.exists()


def test_a_file_that_is_not_a_network_pickle_is_refused_clearly(tmp_path):
    path = tmp_path / "not.pkl"
    path.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(ValueError, match="not a readable network pickle"):
        read_network_pickle(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="holds a dict .* this one a list"):
        read_network_pickle(path)
