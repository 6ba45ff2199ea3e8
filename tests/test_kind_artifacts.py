"""Each model kind admits its own safe artefact format into the registry, and nothing with a pickle in it.

tfidf-logreg: ``vectorizer.json`` + ``weights.npz`` (every array loaded with ``allow_pickle=False``); prompt:
JSON settings + a parquet shot pool of text columns; image kinds: ``config.json`` + ``model.safetensors``. The
registry itself inspects every zip archive member by member, so a ``.npz`` holding an object array (a pickle) is
refused before any kind is asked, and nothing is ever unpickled (a canary proves it).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard.config import load_recipe
from modelyard.kinds import get_kind
from modelyard.registry import RegistryError, open_registry
from modelyard.registry.artifacts import validate_model_dir
from modelyard.training.run import train

from .conftest import synthetic_sentiment

TFIDF = {"type": "tfidf-logreg", "tfidf": {"analyzer": "char", "ngram_min": 1, "ngram_max": 3, "min_df": 1}}


class _Canary:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.flag}",))


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tfidf")
    synthetic_sentiment(160).to_csv(tmp / "reviews.csv", index=False)
    recipe = {
        "name": "tfidf",
        "data": {"path": "reviews.csv", "valid_size": 0.25, "test_size": 0.25, "seed": 1},
        "model": TFIDF,
        "output_dir": "runs",
    }
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return train(load_recipe(tmp / "recipe.yaml"))


def _copy_model(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run / "model", tmp_path / "model"))


def _arrays(npz: Path) -> dict[str, np.ndarray]:
    with np.load(npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------ tfidf-logreg


def test_a_tfidf_model_is_registered_in_its_own_format(tfidf_run: Path, tmp_path: Path) -> None:
    assert validate_model_dir(tfidf_run / "model") == [
        Path("modelyard.json"),
        Path("vectorizer.json"),
        Path("weights.npz"),
    ]
    reg = open_registry(tmp_path / "store")
    try:
        version = reg.register(tfidf_run, "tfidf")
        reg.promote("tfidf", version.version)
        stored = reg.resolve("tfidf", "production")
        assert stored.version == 1 and sorted(p.name for p in (stored.path / "model").iterdir()) == [
            "modelyard.json",
            "vectorizer.json",
            "weights.npz",
        ]
    finally:
        reg.close()


@pytest.mark.parametrize("member", ["terms", "extra"])
def test_an_npz_holding_an_object_array_is_refused_and_never_unpickled(
    member: str, tfidf_run: Path, tmp_path: Path
) -> None:
    flag = tmp_path / "canary-ran"
    model = _copy_model(tfidf_run, tmp_path)
    arrays = _arrays(model / "weights.npz")
    arrays[member] = np.array([_Canary(flag), "x"], dtype=object)  # numpy writes this array as a pickle
    np.savez_compressed(model / "weights.npz", **arrays)
    with pytest.raises(RegistryError, match=rf"weights\.npz: member '{member}\.npy' is an array of Python objects"):
        validate_model_dir(model)
    # The kind's own check (what an ensemble member or a direct caller gets) refuses it too: numpy says no.
    with pytest.raises(ValueError, match=r"weights\.npz cannot be loaded without pickle.*allow_pickle=False"):
        get_kind("tfidf-logreg").check_artifacts(model, json.loads((model / "modelyard.json").read_text()))
    assert not flag.exists(), "the canary ran: something unpickled the .npz"


def test_an_npz_with_a_raw_pickle_member_is_refused(tfidf_run: Path, tmp_path: Path) -> None:
    flag = tmp_path / "canary-ran"
    model = _copy_model(tfidf_run, tmp_path)
    with zipfile.ZipFile(model / "weights.npz", "a") as zf:
        zf.writestr("notes", pickle.dumps(_Canary(flag), protocol=2))
    with pytest.raises(RegistryError, match=r"weights\.npz: member 'notes' is a pickle"):
        validate_model_dir(model)
    assert not flag.exists()


def test_tfidf_artefacts_must_be_complete_and_consistent(tfidf_run: Path, tmp_path: Path) -> None:
    model = _copy_model(tfidf_run, tmp_path)
    arrays = _arrays(model / "weights.npz")
    np.savez(model / "weights.npz", **{k: v for k, v in arrays.items() if k != "idf"})
    with pytest.raises(RegistryError, match=r"weights\.npz lacks the arrays \['idf'\]"):
        validate_model_dir(model)
    np.savez(model / "weights.npz", **{**arrays, "intercept": np.zeros(3)})
    with pytest.raises(RegistryError, match=r"coef \(1, \d+\) / intercept \(3,\) do not fit"):
        validate_model_dir(model)
    np.savez(model / "weights.npz", **arrays)
    assert len(validate_model_dir(model)) == 3
    (model / "vectorizer.json").write_text('{"analyzer": "char_wb"}', encoding="utf-8")
    with pytest.raises(RegistryError, match=r"vectorizer\.json lacks the analyzer settings \['ngram_range'"):
        validate_model_dir(model)
    (model / "vectorizer.json").unlink()
    with pytest.raises(RegistryError, match=r"no vectorizer\.json; a tfidf-logreg model is"):
        validate_model_dir(model)
    (model / "weights.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RegistryError, match=r"weights\.npz: not a readable zip archive"):
        validate_model_dir(model)


# ------------------------------------------------------------------ prompt


def _prompt_model(tmp_path: Path, k: int = 2) -> Path:
    from modelyard.llm.classifier import save_prompt_model

    pool = pd.DataFrame({"text": ["a great film", "a dull film", "lovely", "awful"], "label": ["pos", "neg"] * 2})
    return save_prompt_model(
        tmp_path / "model",
        labels=["neg", "pos"],
        backbone="bundled:smollm2-135m-instruct",  # only the name is recorded: nothing is loaded here
        template=None,
        verbalizers=None,
        shots_cfg={"k": k},
        pool=pool if k else None,
        cleaning={},
        name="p",
        max_length=64,
        chat=False,
    )


def test_a_prompt_model_is_json_settings_and_a_parquet_shot_pool(tmp_path: Path) -> None:
    model = _prompt_model(tmp_path)
    assert validate_model_dir(model) == [Path("modelyard.json"), Path("shots.parquet")]
    pd.DataFrame({"text": ["x", "y"], "label": ["pos", "meh"]}).to_parquet(model / "shots.parquet")
    with pytest.raises(RegistryError, match=r"shots\.parquet has labels the model does not predict: \['meh'\]"):
        validate_model_dir(model)
    pd.DataFrame({"text": ["x", "y"], "label": ["pos", "neg"], "n": [1, 2]}).to_parquet(model / "shots.parquet")
    with pytest.raises(RegistryError, match=r"column 'n' has type int64; a shot pool holds only text columns"):
        validate_model_dir(model)
    pd.DataFrame({"text": ["x"], "label": ["pos"]}).to_parquet(model / "shots.parquet")
    with pytest.raises(RegistryError, match=r"shots\.parquet has 1 examples, fewer than shots\.k=2"):
        validate_model_dir(model)
    (model / "shots.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(RegistryError, match=r"shots\.parquet is not a readable parquet table"):
        validate_model_dir(model)
    (model / "shots.parquet").unlink()
    with pytest.raises(RegistryError, match=r"shots\.k is 2 but there is no shots\.parquet"):
        validate_model_dir(model)


def test_a_zero_shot_prompt_model_needs_complete_settings(tmp_path: Path) -> None:
    model = _prompt_model(tmp_path, k=0)
    assert validate_model_dir(model) == [Path("modelyard.json")]
    meta = json.loads((model / "modelyard.json").read_text())
    (model / "modelyard.json").write_text(json.dumps({**meta, "verbalizers": {"pos": ["good"]}}), encoding="utf-8")
    with pytest.raises(RegistryError, match=r"`verbalizers` must name every label exactly once"):
        validate_model_dir(model)


# ------------------------------------------------------------------ image kinds


def _image_model(tmp_path: Path) -> Path:
    from modelyard.config import recipe_from_dict
    from modelyard.models.image_base import ARCHITECTURES, ImageModelConfig
    from modelyard.models.image_kind import save_image_model

    raw = {"name": "img", "task": "image-classification", "data": {"path": "bundled:digits"}}
    recipe = recipe_from_dict({**raw, "model": {"type": "cnn-small"}}, base_dir=tmp_path)  # registers the kind
    config = ImageModelConfig("cnn-small", 3, 1, [8, 8], width=4, depth=1)
    save_image_model(tmp_path / "model", ARCHITECTURES["cnn-small"](config), None, recipe, ["a", "b", "c"])
    return tmp_path / "model"


def test_an_image_model_is_config_json_and_safetensors(tmp_path: Path) -> None:
    model = _image_model(tmp_path)
    assert validate_model_dir(model) == [Path("config.json"), Path("model.safetensors"), Path("modelyard.json")]
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architecture": "vit-tiny"}), encoding="utf-8")
    with pytest.raises(RegistryError, match=r"config\.json is a 'vit-tiny' model, modelyard\.json says 'cnn-small'"):
        validate_model_dir(model)
    (model / "config.json").write_text(json.dumps({**config, "num_labels": 5}), encoding="utf-8")
    with pytest.raises(RegistryError, match=r"config\.json has 5 outputs for 3 labels"):
        validate_model_dir(model)
    (model / "config.json").write_text(json.dumps({"width": 4}), encoding="utf-8")
    with pytest.raises(RegistryError, match=r"config\.json does not describe an image model"):
        validate_model_dir(model)
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (model / "model.safetensors").unlink()
    with pytest.raises(RegistryError, match=r"no model\.safetensors; an image model is config\.json \+ model"):
        validate_model_dir(model)
