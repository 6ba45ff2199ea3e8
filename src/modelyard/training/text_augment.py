"""``train.augment.text``: label-preserving text augmentation of the training split, drawn anew each epoch.

What one epoch sees is a pure function of ``(seed, epoch, row)``: every row draws from its own NumPy generator
seeded by those numbers, so the same seed gives the same texts, another epoch other variants, and a resumed run
the same epoch it was interrupted in (nothing depends on random state consumed earlier, and the global RNG that
dropout uses is never touched). Valid and test are never changed; labels (and distillation targets) stay those of
the row the variant came from.

* ``copies: 0`` (replace): each epoch every row is swapped for a variant with probability ``prob``.
* ``copies: N`` (add, EDA's n_aug): the split holds every original plus N variants of it, fresh each epoch.

Each variant comes from one method picked at random from ``methods``: EDA (Wei & Zou 2019) ``synonym``,
``insert``, ``swap``, ``delete`` over whitespace words (English; WordNet synonyms, scikit-learn's stop words never
replaced) or jieba words (Chinese; 同义词词林 ``=`` synonyms for content words), with negations never deleted or
replaced; ``contextual`` and ``paraphrase`` (:mod:`modelyard.training.augment_models`); ``width`` (ASCII ↔
full-width characters) and ``script`` (words → Traditional, OpenCC ``s2t``) for Chinese. :func:`check_text_augment`
refuses what cannot work before a run directory exists; :class:`AugmentedTextBatches` is the loop's batch source;
the epochs' counts go to ``augment/epochs.json`` and the manifest (:func:`augment_record`).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelyard._internal.batching import length_grouped_batches, pad_batch
from modelyard._internal.io import read_json, write_json
from modelyard.config import Recipe
from modelyard.config.train import TextAugment
from modelyard.data.chinese import has_cjk
from modelyard.data.wordlists import (
    CONTENT_TAGS_ZH,
    NEGATIONS_EN,
    NEGATIONS_ZH,
    chinese_synonyms,
    chinese_tagged_words,
    cilin_file,
    english_stop_words,
    english_synonyms,
    wordnet_source,
)
from modelyard.errors import ConfigError
from modelyard.training.batch_sources import Encoded, TextBatches, encode

AUGMENT_DIR = "augment"
EPOCHS_FILE = "epochs.json"
_CORE = re.compile(r"^(\W*)([A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z])(\W*)$")
_LEXICON_METHODS = ("synonym", "insert")


def detect_language(texts: list[str]) -> str:
    """``zh`` when at least half of the texts contain a CJK ideograph, else ``en``."""
    return "zh" if texts and 2 * sum(has_cjk(t) for t in texts) >= len(texts) else "en"


def row_rng(seed: int, epoch: int, row: int, copy: int = 0) -> np.random.Generator:
    """The generator of one row's augmentation in one epoch (independent of every other row and epoch)."""
    return np.random.default_rng([seed % (1 << 63), epoch, row, copy])


# ---------------------------------------------------------------- words


class Words:
    """A text as a list of words that the EDA operations edit, and how to join it back.

    English: whitespace tokens (punctuation stays attached; a synonym replaces the alphabetic core). Chinese:
    jieba words with their part-of-speech tags, joined without spaces.
    """

    def __init__(self, text: str, language: str) -> None:
        self.language = language
        if language == "zh":
            tagged = chinese_tagged_words(text)
            self.tokens = [w for w, _ in tagged]
            self.tags = [t for _, t in tagged]
        else:
            self.tokens = text.split()
            self.tags = [""] * len(self.tokens)

    def text(self) -> str:
        return ("" if self.language == "zh" else " ").join(self.tokens)

    def is_word(self, i: int) -> bool:
        tok = self.tokens[i]
        return bool(tok.strip()) and any(c.isalnum() for c in tok)

    def is_negation(self, i: int) -> bool:
        tok = self.tokens[i]
        if self.language == "zh":
            return tok in NEGATIONS_ZH
        m = _CORE.match(tok)
        return m is not None and (m.group(2).lower() in NEGATIONS_EN or m.group(2).lower().endswith("n't"))

    def synonyms(self, i: int) -> tuple[str, ...]:
        """Synonyms of word ``i`` that may replace it (none for stop words, negations and function words)."""
        tok = self.tokens[i]
        if self.language == "zh":
            ok = self.tags[i].startswith(CONTENT_TAGS_ZH) and tok not in NEGATIONS_ZH
            return chinese_synonyms(tok) if ok else ()
        m = _CORE.match(tok)
        if m is None or m.group(2).lower() in _stop_words():
            return ()
        return english_synonyms(m.group(2))

    def replaced(self, i: int, synonym: str) -> str:
        """Word ``i`` with its core replaced by ``synonym`` (English: affixes and a leading capital kept)."""
        if self.language == "zh":
            return synonym
        m = _CORE.match(self.tokens[i])
        assert m is not None
        if m.group(2)[:1].isupper():
            synonym = synonym[:1].upper() + synonym[1:]
        return m.group(1) + synonym + m.group(3)


@functools.lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    return english_stop_words()


def _count(alpha: float, n: int) -> int:
    return max(1, round(alpha * n))


def eda_synonym(words: Words, alpha: float, rng: np.random.Generator) -> str:
    """Replace up to α·n words that have synonyms, each by a random synonym."""
    candidates = [i for i in range(len(words.tokens)) if words.is_word(i) and words.synonyms(i)]
    for i in rng.permutation(candidates)[: _count(alpha, sum(map(words.is_word, range(len(words.tokens)))))]:
        options = words.synonyms(int(i))
        words.tokens[int(i)] = words.replaced(int(i), options[int(rng.integers(len(options)))])
    return words.text()


def eda_insert(words: Words, alpha: float, rng: np.random.Generator) -> str:
    """Insert a synonym of a random word (one that has synonyms) at a random position, α·n times."""
    candidates = [i for i in range(len(words.tokens)) if words.is_word(i) and words.synonyms(i)]
    if not candidates:
        return words.text()
    n = _count(alpha, sum(map(words.is_word, range(len(words.tokens)))))
    inserts = []
    for _ in range(n):
        options = words.synonyms(int(candidates[int(rng.integers(len(candidates)))]))
        inserts.append(options[int(rng.integers(len(options)))])
    for word in inserts:
        words.tokens.insert(int(rng.integers(len(words.tokens) + 1)), word)
    return words.text()


def eda_swap(words: Words, alpha: float, rng: np.random.Generator) -> str:
    """Swap two random words, α·n times (the multiset of words is kept; negations stay where they are)."""
    positions = [i for i in range(len(words.tokens)) if words.is_word(i) and not words.is_negation(i)]
    if len(positions) < 2:
        return words.text()
    for _ in range(_count(alpha, len(positions))):
        a, b = rng.choice(positions, size=2, replace=False)
        words.tokens[a], words.tokens[b] = words.tokens[b], words.tokens[a]
    return words.text()


def eda_delete(words: Words, alpha: float, rng: np.random.Generator) -> str:
    """Drop each word with probability α (never a negation); at least one word always stays."""
    positions = [i for i in range(len(words.tokens)) if words.is_word(i)]
    if len(positions) < 2:
        return words.text()
    drop = {i for i in positions if rng.random() < alpha and not words.is_negation(i)}
    if len(drop) >= len(positions):
        drop.discard(positions[int(rng.integers(len(positions)))])
    words.tokens = [t for i, t in enumerate(words.tokens) if i not in drop]
    return words.text()


def width_variant(text: str, alpha: float, rng: np.random.Generator) -> str:
    """Turn about α of the ASCII letters/digits/punctuation full-width (and full-width ones back to ASCII)."""
    positions = [i for i, c in enumerate(text) if "!" <= c <= "~" or "\uff01" <= c <= "\uff5e"]
    if not positions:
        return text
    chosen = set(rng.choice(positions, size=min(_count(alpha, len(positions)), len(positions)), replace=False))
    return "".join(
        (chr(ord(c) + 0xFEE0) if c <= "~" else chr(ord(c) - 0xFEE0)) if i in chosen else c for i, c in enumerate(text)
    )


@functools.lru_cache(maxsize=1)
def _s2t() -> Any:
    import opencc

    return opencc.OpenCC("s2t")


def script_variant(text: str, alpha: float, rng: np.random.Generator) -> str:
    """Write about α of the words that have a Traditional form in Traditional characters (OpenCC ``s2t``)."""
    tokens = [w for w, _ in chinese_tagged_words(text)]
    converted = [_s2t().convert(w) if has_cjk(w) else w for w in tokens]
    positions = [i for i, (a, b) in enumerate(zip(tokens, converted, strict=True)) if a != b]
    if not positions:
        return text
    chosen = set(rng.choice(positions, size=min(_count(alpha, len(positions)), len(positions)), replace=False))
    return "".join(converted[i] if i in chosen else w for i, w in enumerate(tokens))


EDA = {"synonym": eda_synonym, "insert": eda_insert, "swap": eda_swap, "delete": eda_delete}


def simple_variant(text: str, method: str, language: str, alpha: float, rng: np.random.Generator) -> str:
    """One variant of ``text`` by an operation that needs no model (EDA, width, script)."""
    if method in EDA:
        return EDA[method](Words(text, language), alpha, rng)
    if method == "width":
        return width_variant(text, alpha, rng)
    if method == "script":
        return script_variant(text, alpha, rng)
    raise ValueError(f"{method} needs a model")


# ---------------------------------------------------------------- the augmenter


class TextAugmenter:
    """Variants of the training texts for one epoch (see the module doc). ``filler``/``paraphrases`` are the models."""

    def __init__(
        self,
        spec: TextAugment,
        language: str,
        seed: int,
        *,
        filler: Any = None,
        paraphrases: list[list[str]] | None = None,
    ) -> None:
        self.spec, self.language, self.seed = spec, language, seed
        self.filler, self.paraphrases = filler, paraphrases

    def epoch(self, texts: list[str], epoch: int) -> tuple[list[str], dict[str, Any]]:
        """``texts`` (the expanded split: originals, then ``copies`` blocks) as epoch ``epoch`` sees them."""
        spec = self.spec
        n = len(texts) // (spec.copies + 1)
        out = list(texts)
        jobs: dict[str, list[tuple[int, np.random.Generator]]] = {m: [] for m in spec.methods}
        for r in range(len(texts)):
            row, copy = r % n, r // n
            if spec.copies and copy == 0:
                continue  # add mode: the originals stay as they are
            rng = row_rng(self.seed, epoch, row, copy)
            if not spec.copies and rng.random() >= spec.prob:
                continue
            jobs[spec.methods[int(rng.integers(len(spec.methods)))]].append((r, rng))
        for method, rows in jobs.items():
            if method == "contextual" and rows:
                filled = self.filler.fill([texts[r] for r, _ in rows], [g for _, g in rows])
                for (r, _), text in zip(rows, filled, strict=True):
                    out[r] = text
            elif method == "paraphrase":
                for r, rng in rows:
                    options = self.paraphrases[r % n] if self.paraphrases is not None else []
                    if options:
                        out[r] = options[int(rng.integers(len(options)))]
            else:
                for r, rng in rows:
                    out[r] = simple_variant(texts[r], method, self.language, spec.alpha, rng)
        stats = {
            "epoch": epoch + 1,
            "rows": len(texts),
            "augmented": sum(len(rows) for rows in jobs.values()),
            "changed": sum(a != b for a, b in zip(texts, out, strict=True)),
            "by_method": {m: len(rows) for m, rows in jobs.items()},
        }
        return out, stats


class AugmentedTextBatches(TextBatches):
    """:class:`TextBatches` whose training split is re-augmented and re-tokenized at the start of each epoch."""

    def __init__(
        self, base: TextBatches, augmenter: TextAugmenter, tokenizer: Any, max_length: int, folder: Path
    ) -> None:
        super().__init__(base.splits, base.cfg, base.pad_id, base.device, base.multi_label)
        self.augmenter, self.tokenizer, self.max_length, self.folder = augmenter, tokenizer, max_length, folder
        self._epoch: tuple[int, list[list[int]]] | None = None

    def epoch_ids(self, epoch: int) -> list[list[int]]:
        """The token ids of epoch ``epoch``'s training texts (built once per epoch; unchanged rows reuse theirs)."""
        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1]
        train = self.splits["train"]
        texts, stats = self.augmenter.epoch(train.texts, epoch)
        changed = [r for r, (a, b) in enumerate(zip(train.texts, texts, strict=True)) if a != b]
        ids = list(train.ids)
        encoded = encode(self.tokenizer, [texts[r] for r in changed], self.max_length)
        for r, row_ids in zip(changed, encoded, strict=True):
            ids[r] = row_ids
        self._epoch = (epoch, ids)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / EPOCHS_FILE
        record = read_json(path) if path.is_file() else {}
        write_json(path, record | {str(epoch + 1): stats})  # a resumed epoch is rebuilt identically
        return ids

    def order(self, epoch: int) -> list[np.ndarray]:
        """The epoch's length-grouped batches, by the lengths of its augmented texts."""
        lengths = [len(x) for x in self.epoch_ids(epoch)]
        cfg = self.cfg
        return length_grouped_batches(lengths, cfg.batch_size, cfg.seed + epoch, group_by_length=cfg.group_by_length)

    def inputs(self, idx: np.ndarray, epoch: int, batch: int) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of one batch of augmented texts, on the device."""
        ids = self.epoch_ids(epoch)
        return {k: v.to(self.device) for k, v in pad_batch([ids[i] for i in idx], self.pad_id).items()}


def expand(train: Encoded, copies: int) -> Encoded:
    """The training split with ``copies`` more blocks of every row (add mode); labels repeat with their rows."""
    if not copies:
        return train
    return Encoded(
        texts=train.texts * (copies + 1),
        ids=train.ids * (copies + 1),
        labels=np.concatenate([train.labels] * (copies + 1)),
    )


def text_batches(ft: Any) -> TextBatches:
    """The loop's text batch source: plain, or augmented when ``train.augment.text`` is set.

    ``ft`` is the :class:`~modelyard.training.loop.FineTuneRecipe` being set up (splits tokenized, model built);
    in add mode its training split is expanded here, before the loop counts its steps.
    """
    base = TextBatches(ft.splits, ft.cfg, ft.pad_id, ft.device, ft.multi_label)
    spec = ft.recipe.train.augment.text
    if spec is None:
        return base
    train = ft.splits["train"]
    language = resolve_language(spec, train.texts)
    seed = ft.cfg.seed if spec.seed is None else spec.seed
    folder = Path(ft.run_dir) / AUGMENT_DIR
    filler = paraphrases = None
    if "contextual" in spec.methods:
        from modelyard.training.augment_models import MaskedLMFiller

        filler = MaskedLMFiller(mlm_dir(ft.recipe), language, spec.alpha, ft.recipe.model.max_length, ft.device)
    if "paraphrase" in spec.methods:
        from modelyard.training.augment_models import paraphrase_table, smollm_generator

        paraphrases, _ = paraphrase_table(
            train.texts,
            folder,
            seed=seed,
            k=spec.paraphrases,
            console=ft.console,
            generator=lambda: smollm_generator(spec.paraphrases, ft.device),
        )
    ft.splits["train"] = expand(train, spec.copies)
    ft.console.print(
        f"[bold]augment[/] text ({language}): {', '.join(spec.methods)} · alpha {spec.alpha} · "
        + (f"{spec.copies} new variants per example each epoch" if spec.copies else f"prob {spec.prob} per epoch")
        + f" · seed {seed} · valid/test untouched"
    )
    augmenter = TextAugmenter(spec, language, seed, filler=filler, paraphrases=paraphrases)
    return AugmentedTextBatches(base, augmenter, ft.tokenizer, ft.recipe.model.max_length, folder)


# ---------------------------------------------------------------- checks and records


def resolve_language(spec: TextAugment, texts: list[str]) -> str:
    """``spec.language``, or the language detected from the training texts for ``auto``."""
    return detect_language(texts) if spec.language == "auto" else spec.language


def mlm_dir(recipe: Recipe) -> Path:
    """The masked LM of ``contextual``: ``contextual_model``, else the run's ``model.backbone``.

    Raises:
        ConfigError: it does not resolve, or it has no masked-LM head (names the fix).
    """
    from modelyard.llm.backbones import resolve_backbone
    from modelyard.training.augment_models import mlm_head_problem

    spec = recipe.train.augment.text
    assert spec is not None
    if spec.contextual_model is not None:
        path, key = recipe.resolve(spec.contextual_model), "train.augment.text.contextual_model"
        if not (path / "config.json").is_file():
            raise ConfigError(f"{key} {spec.contextual_model}: {path} is not a model directory (no config.json)")
    else:
        backbone = getattr(recipe.model, "backbone", None)
        key = f"model.backbone {backbone}"
        if backbone is None:
            raise ConfigError(
                f"train.augment.text: `contextual` needs a masked LM and model.type {recipe.model.type} has no "
                "pretrained backbone; set train.augment.text.contextual_model to a `modelyard pretrain` run"
            )
        path = Path(resolve_backbone(backbone, recipe.base_dir))
    problem = mlm_head_problem(path)
    if problem is not None:
        raise ConfigError(
            f"train.augment.text: `contextual` fills masks with {key} ({path}), but {problem}. Set "
            "train.augment.text.contextual_model to a masked LM: a `modelyard pretrain` run (pretrain.init: the "
            "backbone, to continue it) or a Hugging Face directory with MLM weights"
        )
    return path


def check_text_augment(recipe: Recipe, kind: Any, data: Any) -> None:
    """Everything about ``train.augment.text`` that can fail, checked before a run directory exists.

    Raises:
        ConfigError: a kind or task it cannot apply to, a method that contradicts the data's language or its
            cleaning, or a missing lexicon / model (each message names the fix).
    """
    spec = recipe.train.augment.text
    if spec is None:
        return
    if kind.modality != "text" or not kind.trains_in_loop:
        raise ConfigError(
            f"train.augment.text augments the texts of a model trained in the loop; model.type {kind.name} "
            f"{'is not a text model' if kind.modality != 'text' else 'is fitted in one shot'}"
        )
    language = resolve_language(spec, data.train["text"].tolist())
    if language == "zh" and "paraphrase" in spec.methods:
        raise ConfigError(
            "train.augment.text: `paraphrase` uses the bundled English LM and the training texts are Chinese; "
            "use contextual, synonym, width or script"
        )
    chinese_only = [m for m in ("width", "script") if m in spec.methods]
    if language == "en" and chinese_only:
        raise ConfigError(
            f"train.augment.text: {' and '.join(chinese_only)} apply to Chinese; the training texts are English"
        )
    clean = recipe.data.clean
    zh = clean.chinese
    if "width" in spec.methods and (clean.unicode_nfkc or (zh is not None and zh.halfwidth)):
        raise ConfigError(
            "train.augment.text: `width` makes full-width variants, but data.clean.unicode_nfkc / "
            "data.clean.chinese.halfwidth turn every input half-width before the model sees it (training and "
            "serving), so they would never occur; set those false or drop `width`"
        )
    if "script" in spec.methods and zh is not None and zh.traditional_to_simplified:
        raise ConfigError(
            "train.augment.text: `script` makes Traditional variants, but data.clean.chinese.traditional_to_simplified "
            "turns every input Simplified before the model sees it; set it false or drop `script`"
        )
    if any(m in spec.methods for m in _LEXICON_METHODS):  # the lexicon's package is installed
        if language == "en":
            wordnet_source()
        else:
            cilin_file()
    if "contextual" in spec.methods:
        mlm_dir(recipe)
    if "paraphrase" in spec.methods:
        from modelyard.errors import ModelError
        from modelyard.llm.cache import bundled_gguf

        try:
            bundled_gguf("smollm2-135m-instruct")
        except ModelError as err:
            raise ConfigError(f"train.augment.text: `paraphrase` needs the bundled LM: {err}") from None


def augment_record(ft: Any) -> dict[str, Any]:
    """``{"augment_text": …}`` for the manifest (settings, language, per-epoch counts), or ``{}`` when off."""
    batches = getattr(ft, "batches", None)
    if not isinstance(batches, AugmentedTextBatches):
        return {}
    aug = batches.augmenter
    path = batches.folder / EPOCHS_FILE
    epochs = read_json(path) if path.is_file() else {}
    record: dict[str, Any] = {
        **aug.spec.model_dump(mode="json"),
        "language": aug.language,
        "seed": aug.seed,
        "original_train_rows": len(batches.splits["train"].texts) // (aug.spec.copies + 1),
        "epochs": [epochs[k] for k in sorted(epochs, key=int)],
    }
    stats = batches.folder / "paraphrase_stats.json"
    if stats.is_file():
        record["paraphrase"] = read_json(stats)
    return {"augment_text": record}
