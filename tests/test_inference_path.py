"""The inference request path: padding-aware batches (exact, cheaper than fixed batches) and the int8 kernel path."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from modelyard._internal.batching import pad_batch, pad_batch_numpy, padding_aware_batches, sorted_batches
from modelyard.compression.cpu import int8_kernel_path


def _cost(batches: list[np.ndarray], lengths: np.ndarray, call_tokens: int) -> int:
    return int(sum(len(b) * lengths[b].max() + call_tokens for b in batches))


def _brute_force(lengths: np.ndarray, batch_size: int, call_tokens: int) -> int:
    """The cheapest cut of the length-sorted order, by trying every set of cut points."""
    s = sorted(lengths.tolist(), reverse=True)
    n = len(s)
    best = None
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            bounds = [0, *cuts, n]
            if any(b - a > batch_size for a, b in itertools.pairwise(bounds)):
                continue
            cost = sum((b - a) * s[a] + call_tokens for a, b in itertools.pairwise(bounds))
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(6))
def test_padding_aware_batches_are_the_cheapest_cut_and_cover_every_text_once(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 80, size=int(rng.integers(1, 11)))
    batches = padding_aware_batches(lengths, batch_size=4, call_tokens=16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 4 for b in batches)
    assert _cost(batches, lengths, 16) == _brute_force(lengths, 4, 16)


def test_padding_aware_batches_compute_fewer_padded_tokens_than_fixed_batches() -> None:
    # 32 texts of 5-60 tokens in one batch are padded to ~60 each; cut by length far fewer tokens are computed
    lengths = np.random.default_rng(0).integers(5, 61, size=32)
    fixed = sorted_batches(lengths, 32)
    aware = padding_aware_batches(lengths, 32)
    assert len(fixed) == 1 and len(aware) > 1
    padded = lambda bs: int(sum(len(b) * lengths[b].max() for b in bs))  # noqa: E731
    assert padded(aware) < 0.75 * padded(fixed), (padded(aware), padded(fixed))
    # equal lengths: one call (another call would only add its fixed cost)
    assert [len(b) for b in padding_aware_batches([7] * 20, 32)] == [20]
    assert padding_aware_batches([], 32) == []


def test_numpy_padding_matches_torch_padding() -> None:
    seqs = [[5, 6, 7], [8], [9, 10]]
    ids, mask = pad_batch_numpy(seqs, pad_id=0)
    ref = pad_batch(seqs, pad_id=0)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    np.testing.assert_array_equal(ids, ref["input_ids"].numpy())
    np.testing.assert_array_equal(mask, ref["attention_mask"].numpy())


@pytest.mark.parametrize(
    ("flags", "path"),
    [
        ({"avx2", "avx512bw", "avx512_vnni", "amx_int8"}, "amx"),
        ({"avx2", "avx512bw", "avx512_vnni"}, "avx512-vnni"),
        ({"avx2", "avx_vnni"}, "avx-vnni"),
        ({"avx2", "avx512bw"}, "avx512bw"),
        ({"sse4_2", "avx2"}, "avx2"),
        ({"fp", "asimd", "asimddp"}, "arm-dotprod"),
        ({"fp", "asimd"}, "arm-neon"),
        (set(), "generic"),
    ],
)
def test_int8_kernel_path_is_read_from_the_cpu_flags(flags: set[str], path: str) -> None:
    assert int8_kernel_path(frozenset(flags)) == path


def test_single_text_shortcuts_match_the_general_path() -> None:
    """One text: one batch, nothing padded — the same result the general code gives."""
    (only,) = padding_aware_batches([17], batch_size=32)
    assert only.tolist() == [0] and only.dtype == np.int64
    ids, mask = pad_batch_numpy([[5, 6, 7]], pad_id=0)
    assert ids.dtype == mask.dtype == np.int64
    np.testing.assert_array_equal(ids, [[5, 6, 7]])
    np.testing.assert_array_equal(mask, [[1, 1, 1]])


TEXTS = [
    "a gripping, funny and sad film",
    "",
    "   spaces   and\ttabs\n",
    "UPPER case and Ünïcödé ACCENTS",
    "这部电影真的很好看，演员的表演非常自然！",
    "混合 mixed 文本 with numbers 12345 and emoji 🙂",
    " ".join(["long"] * 300),
    "word " * 10 + "这是一个很长的句子" * 40,
]


@pytest.mark.parametrize("max_length", [8, 64, 512])
def test_truncating_backend_gives_the_ids_of_the_tokenizer_call(tiny_backbone, max_length: int) -> None:
    """The request path's private backend copy tokenizes exactly as ``tokenizer(texts, truncation=True, …)``."""
    from transformers import AutoTokenizer

    from modelyard._internal.bundled import BUNDLED_PACKAGES
    from modelyard._internal.packages import package_dir
    from modelyard.llm.backbones import resolve_backbone
    from modelyard.models.text_classifier import truncating_backend

    tokenizers = [AutoTokenizer.from_pretrained(tiny_backbone)]
    if package_dir(BUNDLED_PACKAGES["minilm-l6"].module) is not None:  # a real uncased WordPiece vocabulary
        tokenizers.append(AutoTokenizer.from_pretrained(resolve_backbone("bundled:minilm-l6", Path("."))))
    for tok in tokenizers:
        backend = truncating_backend(tok, max_length)
        want = tok(TEXTS, truncation=True, max_length=max_length)["input_ids"]
        got = [e.ids for e in backend.encode_batch(TEXTS)]
        assert got == want
        assert max(len(x) for x in got) <= max_length
        # the tokenizer itself is left as it was (the copy is private)
        assert tok(TEXTS[-1:])["input_ids"][0] == tok.backend_tokenizer.encode(TEXTS[-1]).ids
