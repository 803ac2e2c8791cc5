"""`semgen import direction` (export/import_direction.py): an InterFaceGAN/HiGAN-style .npy direction becomes a
boundary that HiganPipeline edits along, on an imported generator with no attribute predictors."""

import json
from pathlib import Path

import numpy as np
import pytest

from export.import_direction import parse_layers
from semgen.bundle import MissingPart
from semgen.pipelines.higan import HiganPipeline, load_boundaries

FIXTURES = Path(__file__).resolve().parents[1] / "semgen" / "fixtures" / "stylegan2"


def semgen(argv, capsys) -> tuple[int, str, str]:
    import semgen_cli

    try:
        semgen_cli.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def bundle(tmp_path, capsys):
    out = tmp_path / "bundle"
    assert semgen(["import", "stylegan2", str(FIXTURES / "G64.pkl"), "--out", str(out)], capsys)[0] == 0
    return out


def test_a_direction_is_imported_at_unit_length_with_its_spread_and_edits_along_it(bundle, tmp_path, capsys):
    direction = np.random.default_rng(0).normal(size=(1, 64)) * 7  # InterFaceGAN's (1, w_dim), any length
    np.save(tmp_path / "smile.npy", direction)
    code, out, _ = semgen(["import", "direction", "smile", str(tmp_path / "smile.npy"), "--models", str(bundle),
                           "--layers", "2-4,6", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and (result["layers"], result["directions"]) == ([2, 3, 4, 6], 1)
    b = load_boundaries(bundle / "boundaries")["smile"]
    unit = direction[0] / np.linalg.norm(direction)
    assert np.abs(b.normal - unit).max() < 1e-6 and (b.level, b.method, b.default_layers) == ("imported", "imported",
                                                                                             (2, 3, 4, 6))
    pipe = HiganPipeline.from_dir(bundle)  # no attributes/ nor classifier/: edits without scores
    w = pipe.gan.latents_from_seeds(range(2000))[:, 0].double().numpy()
    assert b.scale == pytest.approx(float((w @ unit).std()), rel=1e-4) and b.scale > 0
    result = pipe.manipulate([("smile", 1.5)], seeds=[3, 4], sweep=(0, 1))
    moved = result.latents[1] - result.latents[0]  # [N, num_ws, w_dim]
    assert np.allclose(moved[:, [2, 3, 4, 6]], 1.5 * b.scale * unit, atol=1e-4)
    assert np.abs(moved[:, [0, 1, 5, 7, 8, 9]]).max() == 0
    assert result.scores == {} and (np.abs(result.images[1].astype(int) - result.images[0]).mean() > 0.5)
    with pytest.raises(MissingPart, match="needs a predictor"):
        pipe.rescore("smile", pipe.gan.latents_from_seeds([0]), [(0,)])


def test_a_second_direction_is_added_and_one_of_the_same_name_needs_replace(bundle, tmp_path, capsys):
    for name, seed in (("smile", 0), ("age", 1)):
        np.save(tmp_path / f"{name}.npy", np.random.default_rng(seed).normal(size=64))  # (w_dim,) works too
        npy = str(tmp_path / f"{name}.npy")
        assert semgen(["import", "direction", name, npy, "--models", str(bundle)], capsys)[0] == 0
    assert list(load_boundaries(bundle / "boundaries")) == ["smile", "age"]
    code, _, err = semgen(["import", "direction", "age", str(tmp_path / "smile.npy"), "--models", str(bundle)], capsys)
    assert code == 2 and "already has a direction 'age'; pass --replace" in err
    assert semgen(["import", "direction", "age", str(tmp_path / "smile.npy"), "--models", str(bundle), "--replace"],
                  capsys)[0] == 0
    b = load_boundaries(bundle / "boundaries")
    assert np.allclose(b["age"].normal, b["smile"].normal) and b["age"].default_layers == tuple(range(10))


@pytest.mark.parametrize("content, message", [
    (np.zeros((1, 64)), "must be finite and non-zero"),
    (np.ones((2, 64)), "expected numbers of shape (1, 64) or (64,)"),
    (np.ones(512), "got float64 (512,)"),  # a direction of another generator
    (np.array([np.nan] * 64), "must be finite"),
])
def test_a_direction_that_does_not_fit_names_the_file_and_writes_nothing(bundle, tmp_path, capsys, content, message):
    np.save(tmp_path / "bad.npy", content)
    code, _, err = semgen(["import", "direction", "bad", str(tmp_path / "bad.npy"), "--models", str(bundle)], capsys)
    assert code == 2 and "bad.npy" in err and message in err
    assert not (bundle / "boundaries").exists()


def test_names_layers_and_files_are_checked_before_anything_is_written(bundle, tmp_path, capsys):
    np.save(tmp_path / "ok.npy", np.ones(64))
    (tmp_path / "text.npy").write_text("not an array")
    for argv, message in ((["Big Name", str(tmp_path / "ok.npy")], "name: 'Big Name' must be"),
                          (["ok", str(tmp_path / "text.npy")], "not a .npy array"),
                          (["ok", str(tmp_path / "ok.npy"), "--layers", "9-12"], "[10, 11, 12] are not"),
                          (["ok", str(tmp_path / "ok.npy"), "--models", str(tmp_path)], "has no stylegan/")):
        models = [] if "--models" in argv else ["--models", str(bundle)]
        code, _, err = semgen(["import", "direction", *argv, *models], capsys)
        assert code == 2 and message in err, (argv, err)
    assert not (bundle / "boundaries").exists()
    assert parse_layers("", 4) == (0, 1, 2, 3) and parse_layers("1, 3", 4) == (1, 3)
    with pytest.raises(ValueError, match="distinct"):
        parse_layers("1,1", 4)


def test_a_bundle_without_directions_says_how_to_add_them(bundle):
    pipe = HiganPipeline.from_dir(bundle)
    with pytest.raises(MissingPart, match=r"no directions .*`semgen import direction NAME FILE.npy --models DIR`"):
        pipe.manipulate([("smile", 1.0)], seeds=[0])
