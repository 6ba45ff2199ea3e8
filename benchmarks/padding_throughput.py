"""Training throughput: length-grouped dynamic padding vs. random batches vs. fixed max-length padding.

Run:  .venv/bin/python benchmarks/padding_throughput.py [--steps 30] [--batch-size 16] [--max-length 64]

Measures, side by side in one process on the bundled Rotten Tomatoes snippets and the bundled
MiniLM-L6, the optimizer steps/s of the training step modelyard uses (forward + backward + AdamW)
under three batching schemes, and prints the ratios. The timed unit is the same for all three;
only the padding differs, which is what `train.group_by_length` controls.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from modelyard._internal.batching import length_grouped_batches, pad_batch
from modelyard.config import DataConfig, validate_model_settings
from modelyard.data import prepare_data
from modelyard.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()

    data = prepare_data(DataConfig(path="bundled:rotten-tomatoes", sample=4000), base_dir=Path.cwd())
    settings = validate_model_settings({"type": "hf-encoder", "max_length": args.max_length})
    model, tok = build_model(settings, data.labels, base_dir=Path.cwd())
    texts = data.train["text"].tolist()
    ids = tok(texts, truncation=True, max_length=args.max_length)["input_ids"]
    lengths = [len(x) for x in ids]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def run(batches: list[np.ndarray], fixed: bool) -> tuple[float, float]:
        tokens = 0
        t0 = time.perf_counter()
        for idx in batches[: args.steps]:
            seqs = [ids[i] for i in idx]
            if fixed:  # what a tokenizer(padding="max_length") pipeline feeds the model
                seqs = [s + [tok.pad_token_id] * (args.max_length - len(s)) for s in seqs]
            batch = pad_batch(seqs, tok.pad_token_id)
            tokens += batch["input_ids"].numel()
            loss = model(**batch).logits.logsumexp(-1).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        return args.steps / (time.perf_counter() - t0), tokens / args.steps

    # warm-up so allocator/thread-pool start-up is not billed to the first scheme
    run(length_grouped_batches(lengths, args.batch_size, 0), fixed=False)
    grouped = run(length_grouped_batches(lengths, args.batch_size, 1, group_by_length=True), fixed=False)
    shuffled = run(length_grouped_batches(lengths, args.batch_size, 1, group_by_length=False), fixed=False)
    fixed = run(length_grouped_batches(lengths, args.batch_size, 1, group_by_length=False), fixed=True)

    print(f"torch threads {torch.get_num_threads()} · batch {args.batch_size} · max_length {args.max_length}")
    print(f"{'scheme':<28}{'steps/s':>10}{'padded tokens/batch':>22}")
    for name, (sps, tpb) in [
        ("length-grouped dynamic", grouped),
        ("random dynamic", shuffled),
        ("fixed max_length", fixed),
    ]:
        print(f"{name:<28}{sps:>10.2f}{tpb:>22.0f}")
    print(f"speed-up grouped vs fixed max_length: {grouped[0] / fixed[0]:.2f}x")
    print(f"speed-up grouped vs random dynamic:   {grouped[0] / shuffled[0]:.2f}x")


if __name__ == "__main__":
    main()
