"""Recipe loading: errors name the key and the fix; overrides; annotated starter recipe round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelyard.config import Recipe, annotated_yaml, load_recipe, recipe_from_dict
from modelyard.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"data": {"path": "x.csv"}, "train": {"epoch": 1}},
            "unknown key `train.epoch`; did you mean `train.epochs`?",
        ),
        ({"data": {"path": "x.csv"}, "trian": {}}, "unknown key `trian`; did you mean `train`?"),
        (
            {"data": {"path": "x.csv"}, "train": {"learning_rate": -1}},
            "`train.learning_rate`: Input should be greater than 0",
        ),
        (
            {"data": {"path": "x.csv"}, "train": {"epochs": "many"}},
            "`train.epochs`: Input should be a valid integer",
        ),
        ({}, "missing required key `data`"),
        ({"data": {"path": "x", "text_column": "a", "label_column": "a"}}, "both 'a'"),
        ({"data": {"path": "x"}, "train": {"metric": "acuracy"}}, "did you mean 'accuracy'"),
        ({"data": {"path": "x"}, "train": {"warmup_ratio": 0.2, "warmup_steps": 10}}, "can't set both"),
        ({"data": {"path": "x", "clean": {"min_chars": 10, "max_chars": 5}}}, "max_chars (5) is below"),
        ({"data": {"path": "x"}, "name": "../evil"}, "`name`: String should match pattern"),
        ({"data": {"path": "x", "valid_size": 0.7}}, "`data.valid_size`: Input should be less than 0.5"),
    ],
)
def test_invalid_recipes_name_the_key(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(raw)
    assert expected in str(info.value)


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "data:\n  path: x.csv\n train: [\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_recipe(p)


def test_empty_and_non_mapping_recipes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        load_recipe(_write(tmp_path, ""))
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    p = _write(tmp_path, "data:\n  path: x.csv\n")
    r = load_recipe(p, ["train.epochs=1", "data.sample=2000", "train.learning_rate=3e-5", "model.backbone=./m"])
    assert (r.train.epochs, r.data.sample, r.train.learning_rate) == (1, 2000, 3e-5)
    with pytest.raises(ConfigError, match="unknown key `train.epoks`"):
        load_recipe(p, ["train.epoks=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_recipe(p, ["epochs"])
    with pytest.raises(ConfigError, match="`train.batch_size`"):
        load_recipe(p, ["train.batch_size=0"])


def test_relative_paths_resolve_against_recipe_folder(tmp_path: Path) -> None:
    sub = tmp_path / "proj"
    sub.mkdir()
    r = load_recipe(_write(sub, "data:\n  path: data/x.csv\noutput_dir: out\n"))
    assert r.resolve(r.data.path) == (sub / "data" / "x.csv").resolve()
    assert r.resolve(r.output_dir) == (sub / "out").resolve()
    assert r.resolve("/abs/y.csv") == Path("/abs/y.csv")


def test_annotated_yaml_documents_every_field_and_round_trips(tmp_path: Path) -> None:
    r = recipe_from_dict({"data": {"path": "x.csv"}, "train": {"epochs": 2}})
    text = annotated_yaml(r)
    reloaded = recipe_from_dict(yaml.safe_load(text))
    assert reloaded.model_dump() == r.model_dump()

    def leaves(model: type, prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, Recipe.__mro__[1]):
                out += leaves(ann, prefix + name + ".")
            else:
                out.append(name)
        return out

    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"field without a comment: {line}"
    assert "(default: 3)" in text and "(required)" in text
    assert len(leaves(Recipe)) > 40
