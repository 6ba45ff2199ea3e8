"""The whole recipe: one section per stage, loaded from YAML with dotted ``key=value`` overrides."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from modelyard.config._base import NAME_PATTERN, _Stage
from modelyard.config.data import DataConfig
from modelyard.config.distributed import DistributedConfig
from modelyard.config.model import ModelSettings, default_model_settings, validate_model_settings
from modelyard.config.serve import ServeConfig
from modelyard.config.train import (
    MULTI_LABEL_METRICS,
    SINGLE_LABEL_METRICS,
    AugmentConfig,
    PretrainConfig,
    TrainConfig,
)
from modelyard.config.tune import _UNTUNABLE, TuneConfig
from modelyard.errors import ConfigError
from modelyard.kinds import available_kinds, get_kind, kinds_for, kinds_with


def _check_tunable_key(key: str, model_section: type[BaseModel] | None = None) -> None:
    """Raise ``ValueError`` unless ``key`` is a dotted path to a leaf field of :class:`Recipe`.

    ``model_section`` is the settings class of the recipe's model kind (``model.*`` keys are checked
    against it).
    """
    parts = key.split(".")
    if parts[0] in _UNTUNABLE:
        raise ValueError(f"`tune.space.{key}`: `{parts[0]}` cannot be tuned; tune keys of data, model or train")
    model: type[BaseModel] = Recipe
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if i == 0 and part == "model" and model_section is not None:
            model = model_section
            continue
        if field is None:
            close = difflib.get_close_matches(part, list(model.model_fields), n=1, cutoff=0.6)
            where = ".".join(parts[:i])
            hint = (
                f"; did you mean `{'.'.join([*parts[:i], close[0]])}`?"
                if close
                else f"; valid keys{' under ' + where if where else ''}: {', '.join(model.model_fields)}"
            )
            raise ValueError(f"`tune.space.{key}`: `{key}` is not a recipe key{hint}")
        ann = field.annotation
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
        last = i == len(parts) - 1
        if last and is_section:
            raise ValueError(
                f"`tune.space.{key}`: `{key}` is a section; name one of its keys, "
                f"e.g. `{key}.{next(iter(ann.model_fields))}`"
            )
        if not last and not is_section:
            raise ValueError(f"`tune.space.{key}`: `{'.'.join(parts[: i + 1])}` is not a section")
        if is_section:
            model = ann


def _check_multi_label(recipe: Recipe) -> None:
    """The recipe keys a multi-label run cannot use yet, and the model kinds that can learn label sets."""
    kind = get_kind(recipe.model.type)
    if not kind.can("multi_label"):
        able = ", ".join(kinds_with("multi_label"))
        raise ValueError(
            f"model.type '{recipe.model.type}' cannot learn label sets; for task multi-label-classification "
            f"set model.type to one of {able}"
        )
    if recipe.data.extra_train:
        raise ValueError("data.extra_train is not supported with task multi-label-classification yet; remove it")
    if recipe.data.sample is not None:
        raise ValueError("data.sample is not supported with task multi-label-classification yet; remove it")
    single_only = {
        "train.distill": recipe.train.distill is not None,
        "train.label_smoothing": recipe.train.label_smoothing > 0,
        "train.rdrop_alpha": recipe.train.rdrop_alpha > 0,
    }
    for key, used in single_only.items():
        if used:
            raise ValueError(
                f"{key} works on one label per text (softmax); remove it for task multi-label-classification"
            )
    if recipe.train.metric not in MULTI_LABEL_METRICS:
        raise ValueError(
            f"train.metric '{recipe.train.metric}' is not a multi-label metric; use one of "
            f"{', '.join(sorted(MULTI_LABEL_METRICS))} (accuracy is subset accuracy)"
        )


def _image_classifiers() -> list[str]:
    generative = set(kinds_with("generative"))
    return [k for k in kinds_for("image") if k not in generative]


class Recipe(_Stage):
    """A whole modelyard recipe: one section per stage."""

    name: str = Field("text-classifier", pattern=NAME_PATTERN, description="Application name (runs, registry).")
    task: Literal["text-classification", "multi-label-classification", "image-classification", "image-generation"] = (
        Field(
            "text-classification",
            description="What is being learned: text-classification (one label per text), multi-label-classification "
            "(a set of labels per text), image-classification, or image-generation (a `vae` or `gan` that learns "
            "to generate the training images, per class).",
        )
    )
    data: DataConfig
    model: SerializeAsAny[ModelSettings] = Field(
        default_factory=default_model_settings, description="Model section (its keys depend on `model.type`)."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training section.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Serving section.")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="Hyper-parameter search section.")
    pretrain: PretrainConfig | None = Field(
        None, description="MLM pretraining section (`modelyard pretrain`); null when unused."
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Image augmentation section.")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Data-parallel training (torchrun DDP or Ray Train)."
    )
    output_dir: str = Field(
        "runs", description="Folder (relative to the recipe's folder) holding one directory per run."
    )

    @field_validator("model", mode="wrap")
    @classmethod
    def _model_kind(cls, value: Any, handler: Any) -> ModelSettings:
        return validate_model_settings(value)

    @model_validator(mode="after")
    def _task_model(self) -> Recipe:
        for key in self.tune.space:
            _check_tunable_key(key, type(self.model))
        kind = get_kind(self.model.type)
        generative = kind.can("generative")
        image_model = kind.modality == "image" and not generative
        if self.task == "image-generation" and not generative:
            raise ValueError(
                f"task image-generation needs a generative model; set model.type to one of "
                f"{', '.join(kinds_with('generative'))} (model.type is '{self.model.type}')"
            )
        if generative and self.task != "image-generation":
            raise ValueError(
                f"model.type '{self.model.type}' generates images; set task: image-generation "
                f"(or pick a classifier: {', '.join(_image_classifiers())})"
            )
        if self.task == "image-classification" and not image_model:
            raise ValueError(
                f"task image-classification needs an image model; set model.type to one of "
                f"{', '.join(_image_classifiers())} (model.type is '{self.model.type}')"
            )
        if self.task == "multi-label-classification":
            _check_multi_label(self)
        elif self.data.label_columns is not None or self.data.label_separator != "auto":
            key = "data.label_columns" if self.data.label_columns is not None else "data.label_separator"
            raise ValueError(f"{key} applies to task: multi-label-classification only (task is {self.task})")
        elif self.train.metric not in SINGLE_LABEL_METRICS:
            raise ValueError(
                f"train.metric '{self.train.metric}' is a multi-label metric; use one of "
                f"{', '.join(sorted(SINGLE_LABEL_METRICS))} for task {self.task}"
            )
        if self.task not in ("image-classification", "image-generation") and image_model:
            raise ValueError(
                f"model.type '{self.model.type}' classifies images; set task: image-classification "
                "or pick a text model (hf-encoder, prompt)"
            )
        if self.train.augment.generated is not None and self.task != "image-classification":
            raise ValueError(
                "train.augment.generated adds generated images to an image classifier's training split; "
                f"it needs task: image-classification (task is {self.task})"
            )
        if self.augment.enabled and self.task != "image-classification":
            raise ValueError("the augment section applies to images only; remove it or set task: image-classification")
        if self.data.clean.label_issues != "off" and self.task != "text-classification":
            raise ValueError(
                f"data.clean.label_issues audits single-label text data; set it to off for task {self.task}"
            )
        return self

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the recipe resolve against (the recipe file's folder)."""
        return self._base_dir

    def resolve(self, path: str) -> Path:
        """Resolve a recipe path against :attr:`base_dir` (absolute paths and ``~`` pass through)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    def to_yaml(self) -> str:
        """The fully resolved recipe, defaults included."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- loading


def _format_validation_error(err: ValidationError, source: str, raw: Any = None) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(recipe)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key `{key}`{_suggest(key, raw)}")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key `{key}`; add it to the recipe")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            got_s = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
            lines.append(f"{source}: `{key}`: {msg}{got_s}")
    return "; ".join(lines)


def _model_section_class(section: Any) -> type[BaseModel] | None:
    """The settings class of a raw ``model`` section's kind (None when the kind is unknown)."""
    name = section.get("type", "hf-encoder") if isinstance(section, dict) else "hf-encoder"
    try:
        return get_kind(str(name)).settings
    except ConfigError:
        return None


def _suggest(dotted: str, raw: Any = None) -> str:
    *parents, leaf = dotted.split(".")
    model: type[BaseModel] = Recipe
    node = raw
    kind_note = ""
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else (node[int(p)] if isinstance(node, list) else None)
        if p == "model" or (p.isdigit() and model is ModelSettings):  # a model section (or an ensemble member)
            cls = _model_section_class(node)
            if cls is None:
                return ""
            kind_name = node.get("type", "hf-encoder") if isinstance(node, dict) else ""
            model, kind_note = cls, f" of model.type '{kind_name}'"
            continue
        field = model.model_fields.get(p)
        ann = getattr(field, "annotation", None) if field else None
        if p == "members":
            model = ModelSettings
            continue
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    close = difflib.get_close_matches(leaf, list(model.model_fields), n=1, cutoff=0.6)
    valid = ", ".join(model.model_fields)
    if close:
        return f"; did you mean `{'.'.join([*parents, close[0]])}`?"
    if kind_note:  # a key of another model kind: name the kind it belongs to
        owners = [n for n in available_kinds() if leaf in get_kind(n).settings.model_fields]
        if owners:
            return (
                f": {'.'.join([*parents, leaf])} is only used with model.type "
                + " or ".join(f"'{n}'" for n in owners)
                + f" (this section is{kind_note.removeprefix(' of')}); valid keys here: {valid}"
            )
    return f"; valid keys{kind_note}: {valid}"


_OVERRIDE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)$", re.S)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML scalars) to a raw recipe dict."""
    for item in overrides:
        m = _OVERRIDE.match(item)
        if not m:
            raise ConfigError(f"override '{item}' is not of the form section.key=value (e.g. train.epochs=1)")
        key, value_s = m.groups()
        try:
            value = yaml.safe_load(value_s) if value_s != "" else ""
        except yaml.YAMLError:
            value = value_s
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': `{p}` is not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


def recipe_from_dict(raw: dict[str, Any], *, base_dir: Path | None = None, source: str = "recipe") -> Recipe:
    """Validate a raw dict into a :class:`Recipe`, raising :class:`ConfigError` naming each bad key."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, raw)) from None
    recipe._base_dir = (base_dir or Path.cwd()).resolve()
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe, apply ``key=value`` overrides, validate.

    Relative paths inside the recipe resolve against the recipe file's folder.

    Raises:
        ConfigError: the file is missing or malformed, or a key is unknown or invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if raw is None:
        raise ConfigError(f"{path}: the recipe is empty; start from `modelyard init`")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping (sections data, model, train …)")
    raw = apply_overrides(raw, overrides or [])
    return recipe_from_dict(raw, base_dir=path.parent, source=str(path))


# ---------------------------------------------------------------- annotated starter recipe


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("\n...")


def annotated_yaml(recipe: Recipe) -> str:
    """Render a recipe as YAML with every field preceded by its description and default."""
    out: list[str] = []

    def emit(model: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            desc = field.description or ""
            if isinstance(value, BaseModel):
                doc = (type(value).__doc__ or desc).strip().splitlines()[0]
                out.append(f"{pad}# {doc}")
                out.append(f"{pad}{name}:")
                emit(value, indent + 1)
                continue
            default = (
                "required"
                if field.is_required()
                else f"default: {_yaml_scalar(field.get_default(call_default_factory=True))}"
            )
            out.append(f"{pad}# {desc} ({default})")
            out.append(f"{pad}{name}: {_yaml_scalar(model.model_dump(mode='json')[name])}")

    emit(recipe, 0)
    return "\n".join(out) + "\n"
