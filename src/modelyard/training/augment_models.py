"""The two model-backed text augmentations of ``train.augment.text``: masked-LM substitution and LM paraphrases.

* :class:`MaskedLMFiller` (``contextual``): masks about ``alpha`` of a text's words (single-token English words;
  whole jieba words for Chinese, every character masked) and re-fills each masked token from the masked LM's five
  most likely tokens other than the original (sampled by their renormalised probabilities with the row's own
  generator). The text is rebuilt from the tokenizer's character offsets, so everything not masked stays as it was
  (case, spacing, punctuation). Rows are filled in batches of 64 under ``torch.inference_mode``.
* :func:`generate_paraphrases` (``paraphrase``, English): the bundled SmolLM2-135M-Instruct rewrites each training
  text ``k`` times once per run (seeded sampling, temperature 0.9); :func:`clean_paraphrase` rejects degenerate
  outputs. :func:`paraphrase_table` caches them in the run directory (``augment/paraphrases.jsonl``, atomic), so a
  resumed run reuses them and every epoch only picks one.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from modelyard._internal.io import atomic_write_text, read_jsonl, write_json
from modelyard.data.chinese import has_cjk
from modelyard.data.wordlists import NEGATIONS_ZH, chinese_tagged_words, english_stop_words
from modelyard.errors import ConfigError

TOP_K = 5
MAX_NEW_TOKENS = 160  # a rewrite longer than this is cut (long synopses would otherwise dominate the cost)
FILL_BATCH = 64
PARAPHRASE_LM = "bundled:smollm2-135m-instruct"
PARAPHRASE_PROMPT = (
    "Rewrite the following text in different words. Keep its meaning, tone and opinion. "
    "Reply with the rewritten text only.\n\nText: {text}"
)
_EN_WORD = re.compile(r"[A-Za-z]+")

GenerateFn = Callable[[list[str], int], list[list[str]]]
"""``(texts, seed) → k raw outputs per text``: what :func:`paraphrase_table` asks a generator for."""


def mlm_head_problem(model_dir: Path) -> str | None:
    """Why ``model_dir`` cannot fill masks (no masked-LM class, or no masked-LM head weights), or None.

    The head's parameter names come from the masked-LM class of the directory's config, built on the meta device
    (no memory, no weights); at least one of them must be in the directory's safetensors files. Sentence encoders
    such as all-MiniLM-L6-v2 ship the encoder only, and transformers would silently start a random head.
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForMaskedLM

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            skeleton = AutoModelForMaskedLM.from_config(config)
    except (OSError, ValueError, KeyError) as err:
        return f"it is not a masked language model ({str(err).splitlines()[0]})"
    prefix = f"{skeleton.base_model_prefix}."
    head = {k for k in skeleton.state_dict() if not k.startswith(prefix)}
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return "it has no .safetensors weights"
    stored: set[str] = set()
    for path in files:
        with safe_open(str(path), "pt") as f:
            stored.update(f.keys())
    if not head & stored:
        return f"its weights have no masked-LM head (none of {', '.join(sorted(head)[:3])}, …)"
    return None


class MaskedLMFiller:
    """Contextual substitution with a masked LM (see the module doc)."""

    def __init__(self, model_dir: Path, language: str, alpha: float, max_length: int, device: torch.device) -> None:
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
            self.model = AutoModelForMaskedLM.from_pretrained(
                model_dir, local_files_only=True, trust_remote_code=False, use_safetensors=True
            )
        except (OSError, ValueError) as err:
            raise ConfigError(f"train.augment.text.contextual_model: cannot load {model_dir}: {err}") from None
        if self.tokenizer.mask_token_id is None or not self.tokenizer.is_fast:
            raise ConfigError(
                f"train.augment.text.contextual_model: {model_dir} needs a fast tokenizer with a mask token"
            )
        self.model.to(device).eval()
        self.device, self.language, self.alpha, self.max_length = device, language, alpha, max_length
        self.stop = english_stop_words()
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        special = set(self.tokenizer.all_special_ids)
        if language == "zh":
            ok = [i not in special and len(t) == 1 and has_cjk(t) for i, t in enumerate(vocab)]
        else:
            ok = [
                i not in special and t.isascii() and t.isalpha() and len(t) > 1 and t.lower() not in self.stop
                for i, t in enumerate(vocab)
            ]
        size = self.model.get_output_embeddings().weight.shape[0]
        allowed = torch.zeros(size, dtype=torch.bool)
        allowed[: len(ok)] = torch.tensor(ok[:size])
        self.allowed = allowed.to(device)

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the words that may be masked."""
        if self.language == "zh":
            spans, pos = [], 0
            for word, tag in chinese_tagged_words(text):
                if has_cjk(word) and word not in NEGATIONS_ZH and tag != "x":
                    spans.append((pos, pos + len(word)))
                pos += len(word)
            return spans
        return [(m.start(), m.end()) for m in _EN_WORD.finditer(text) if m.group().lower() not in self.stop]

    def _plan(self, text: str, rng: np.random.Generator) -> tuple[list[int], Any, list[list[int]]] | None:
        """Token ids, their character offsets and the token positions of each chosen word (None: nothing maskable)."""
        enc = self.tokenizer(text, truncation=True, max_length=self.max_length, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        units = []
        for start, end in self._spans(text):
            positions = [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
            if not positions or "".join(text[offsets[i][0] : offsets[i][1]] for i in positions) != text[start:end]:
                continue  # partly truncated, or the tokens do not cover the word exactly
            if self.language == "en" and len(positions) != 1:
                continue  # English: single-token words only (independent word pieces would make non-words)
            units.append(positions)
        if not units:
            return None
        n = max(1, round(self.alpha * len(units)))
        chosen = sorted(rng.choice(len(units), size=min(n, len(units)), replace=False).tolist())
        return list(enc["input_ids"]), offsets, [units[i] for i in chosen]

    @torch.inference_mode()
    def fill(self, texts: list[str], rngs: list[np.random.Generator]) -> list[str]:
        """Each text with its chosen words re-filled (unchanged when it has no maskable word)."""
        out = list(texts)
        plans = [(j, p) for j, (t, r) in enumerate(zip(texts, rngs, strict=True)) if (p := self._plan(t, r))]
        mask_id = self.tokenizer.mask_token_id
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(plans), FILL_BATCH):
            chunk = plans[start : start + FILL_BATCH]
            width = max(len(plan[0]) for _, plan in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for r, (_, (tok, _, units)) in enumerate(chunk):
                ids[r, : len(tok)] = torch.tensor(tok)
                attn[r, : len(tok)] = 1
                for positions in units:
                    ids[r, positions] = mask_id
            logits = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device)).logits
            for r, (j, (tok, offsets, units)) in enumerate(chunk):
                out[j] = self._rebuild(texts[j], tok, offsets, units, logits[r], rngs[j])
        return out

    def _rebuild(
        self,
        text: str,
        tok: list[int],
        offsets: Any,
        units: list[list[int]],
        logits: torch.Tensor,
        rng: np.random.Generator,
    ) -> str:
        pieces: list[tuple[int, int, str]] = []
        for positions in units:
            filled = []
            for i in positions:
                scores = logits[i].float().masked_fill(~self.allowed, float("-inf"))
                scores[tok[i]] = float("-inf")  # never the original token
                top = torch.topk(scores, TOP_K)
                probs = torch.softmax(top.values, dim=-1).double().cpu().numpy()
                pick = int(top.indices[int(rng.choice(len(probs), p=probs / probs.sum()))])
                filled.append(self.tokenizer.convert_tokens_to_string([self.tokenizer.convert_ids_to_tokens(pick)]))
            start, end = offsets[positions[0]][0], offsets[positions[-1]][1]
            word = "".join(s.strip() for s in filled)
            if self.language == "en" and text[start:end][:1].isupper():
                word = word[:1].upper() + word[1:]
            pieces.append((start, end, word))
        for start, end, word in sorted(pieces, reverse=True):
            text = text[:start] + word + text[end:]
        return text


def clean_paraphrase(original: str, output: str) -> tuple[str | None, str]:
    """``(paraphrase, "ok")``, or ``(None, reason)`` for a degenerate output.

    Kept: the first non-empty line, without surrounding quotes. Rejected: empty; identical to the original
    (ignoring case, spacing and punctuation); more than 3× or less than a third of its length; or an echo of the
    prompt (the instruction's words, a ``Text:`` label, a chat preamble such as "Sure, here is …", or talk about
    the text instead of a rewrite: "The text conveys …", "In this text, …").
    """
    line = next((s.strip() for s in output.splitlines() if s.strip()), "")
    line = line.strip().strip("\"'“”‘’`").strip()
    if not line:
        return None, "empty"
    simple = re.sub(r"\W+", "", line).lower()
    if simple == re.sub(r"\W+", "", original).lower():
        return None, "identical"
    if len(line) > 3 * len(original) or 3 * len(line) < len(original):
        return None, "length"
    lowered = line.lower()
    echoes = ("rewrite", "rewritten", "text:", "keep its meaning", "in different words", "paraphrase")
    # a small LM often talks about the text instead of rewriting it ("The text conveys …", "In this text, …")
    meta = (
        "sure",
        "here is",
        "here's",
        "certainly",
        "the text",
        "this text",
        "in this text",
        "the sentence",
        "the author",
    )
    if any(e in lowered for e in echoes) or lowered.startswith(meta):
        return None, "prompt"
    return line, "ok"


def smollm_generator(k: int, device: torch.device) -> GenerateFn:
    """A generator of ``k`` sampled rewrites per text with the bundled SmolLM2-135M-Instruct (loaded once)."""
    from modelyard.llm.cache import load_lm, resolve_lm

    model, tokenizer = load_lm(resolve_lm(PARAPHRASE_LM, Path.cwd()), device=device)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    def generate(texts: list[str], seed: int) -> list[list[str]]:
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": PARAPHRASE_PROMPT.format(text=t)}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for t in texts
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():  # the loop's RNG is left alone
            torch.manual_seed(seed)
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=0.9,
                top_p=0.95,
                max_new_tokens=min(math.ceil(1.5 * longest) + 8, MAX_NEW_TOKENS),
                num_return_sequences=k,
                pad_token_id=tokenizer.pad_token_id,
            )
        decoded = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [decoded[i * k : (i + 1) * k] for i in range(len(texts))]

    return generate


def paraphrase_table(
    texts: list[str],
    folder: Path,
    *,
    seed: int,
    k: int,
    console: Console,
    generator: Callable[[], GenerateFn],
    batch_size: int = 8,
) -> tuple[list[list[str]], dict[str, Any]]:
    """Accepted paraphrases per text (possibly none), generated once and cached in ``folder``.

    ``folder/paraphrases.jsonl`` (one ``{"text", "paraphrases"}`` line per training row) and
    ``folder/paraphrase_stats.json`` are written atomically when generation ends; when they exist for these
    very texts (a resumed run) they are read instead. ``generator()`` builds the generator only when needed.
    """
    cache, stats_path = folder / "paraphrases.jsonl", folder / "paraphrase_stats.json"
    if cache.is_file() and stats_path.is_file():
        rows = read_jsonl(cache)
        if [r.get("text") for r in rows] == list(texts):
            stats = json.loads(stats_path.read_text(encoding="utf-8"))
            console.print(f"augment: paraphrases of {len(rows)} training texts reused from {cache}")
            return [list(r["paraphrases"]) for r in rows], stats
    generate = generator()
    table: list[list[str]] = [[] for _ in texts]
    # texts of similar length share a batch (less padding, and the longest text sets each batch's token budget)
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    reasons: dict[str, int] = {}
    t0 = time.perf_counter()
    columns = (
        TextColumn("[bold]paraphrase[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("paraphrase", total=len(texts))
        for b, start in enumerate(range(0, len(texts), batch_size)):
            rows = order[start : start + batch_size]
            chunk = [texts[i] for i in rows]
            batch_seed = int(np.random.SeedSequence([seed % (1 << 63), b]).generate_state(1)[0])
            for i, text, outputs in zip(rows, chunk, generate(chunk, batch_seed), strict=True):
                kept: dict[str, None] = {}
                for output in outputs:
                    para, reason = clean_paraphrase(text, output)
                    reasons[reason] = reasons.get(reason, 0) + 1
                    if para is not None:
                        kept[para] = None
                table[i] = list(kept)
            bar.update(task, advance=len(chunk))
    seconds = time.perf_counter() - t0
    stats = {
        "texts": len(texts),
        "per_text": k,
        "accepted": reasons.get("ok", 0),
        "rejected": {r: n for r, n in sorted(reasons.items()) if r != "ok"},
        "texts_without_paraphrase": sum(1 for p in table if not p),
        "seconds": round(seconds, 1),
        "seconds_per_text": round(seconds / max(len(texts), 1), 3),
    }
    folder.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"text": t, "paraphrases": p}, ensure_ascii=False) for t, p in zip(texts, table, strict=True))
    atomic_write_text(cache, "".join(line + "\n" for line in lines))
    write_json(stats_path, stats)
    console.print(
        f"augment: paraphrased {len(texts)} texts × {k} in {seconds:.0f} s ({stats['seconds_per_text']} s/text); "
        f"kept {stats['accepted']}, rejected {stats['rejected']}"
    )
    return table, stats
