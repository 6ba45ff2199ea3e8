"""Few-shot prompt scoring with and without the shared-prefix key/value cache, side by side in one run.

    python benchmarks/prompt_prefix_cache.py [--texts 48] [--shots 4] [--batch-size 16] [--threads 2]

Builds a k-shot prompt model on the bundled SmolLM2-135M-Instruct (shots from the Rotten Tomatoes training
texts, chat template on), then scores the same ``--texts`` validation snippets twice: once running every
full prompt (``reuse_prefix=False``) and once running the shared prefix (system header, instructions, the k
examples) a single time and every text from its cache. Prints texts/s of both, the speed-up, and the largest
difference between the two probability matrices (they must agree to float32 rounding).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from modelyard.data.sources import load_bundled
    from modelyard.llm import scoring
    from modelyard.llm.classifier import load_prompt_model, save_prompt_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    frame, _ = load_bundled("rotten-tomatoes")
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    pool, queries = frame.iloc[:500], frame.iloc[500 : 500 + args.texts]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_prompt_model(
            Path(tmp) / "model",
            labels=["fresh", "rotten"],
            backbone="bundled:smollm2-135m-instruct",
            template=None,
            verbalizers={"fresh": ["positive"], "rotten": ["negative"]},
            shots_cfg={"k": args.shots, "method": "random", "seed": 0},
            pool=pool[["text", "label"]],
            cleaning={},
            name="bench",
            max_length=512,
            chat=True,
            batch_size=args.batch_size,
        )
        clf = load_prompt_model(model_dir, device="cpu")
        texts = queries["text"].astype(str).tolist()
        clf.predict_proba(texts[:2])  # warm-up

        original = scoring.word_logprobs
        results = {}
        for reuse in (False, True):

            def patched(*a: object, _reuse: bool = reuse, **kw: object) -> np.ndarray:
                return original(*a, **{**kw, "reuse_prefix": _reuse})  # type: ignore[arg-type]

            scoring.word_logprobs = patched  # type: ignore[assignment]
            t0 = time.perf_counter()
            probs = clf.predict_proba(texts)
            results[reuse] = (time.perf_counter() - t0, probs)
        scoring.word_logprobs = original
        prefix = len(clf.tokenizer(clf.render_prompts(texts[:1])[0])["input_ids"])

    plain_s, plain_p = results[False]
    cached_s, cached_p = results[True]
    print(
        f"{args.shots}-shot prompts, ~{prefix} tokens each, {len(texts)} texts,"
        f" batch {args.batch_size}, {args.threads} threads"
    )
    print("| scoring | seconds | texts/s |")
    print("|---|---|---|")
    print(f"| full prompts | {plain_s:.1f} | {len(texts) / plain_s:.2f} |")
    print(f"| shared-prefix cache | {cached_s:.1f} | {len(texts) / cached_s:.2f} |")
    print(f"speed-up {plain_s / cached_s:.2f}x · max |Δp| {np.abs(plain_p - cached_p).max():.2e}")
    return 0 if np.abs(plain_p - cached_p).max() < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
