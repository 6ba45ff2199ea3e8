"""Recall and precision of modelyard's PII engine per entity type on a labelled JSONL set.

    python benchmarks/pii.py                                   # both committed sets
    python benchmarks/pii.py FILE.jsonl [--lang auto|en|zh] [--exact] [--errors N]

Lines: {"text", "lang", "entities": [{"type", "start", "end"}]} (as written by make_pii_eval.py). Matching is
span-level: a gold entity is found when a predicted entity of the same type overlaps it (``--exact``: same start and
end); a predicted entity is correct when it overlaps a gold entity of the same type. The exact-span share of the
matches is printed too. Decoys intact: the share of sentences without PII in which nothing was found. Throughput:
texts per second of ``PiiEngine.find`` on one thread, after the engine is built.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

DEFAULT = [Path(__file__).resolve().parent / "data" / n for n in ("pii_eval.jsonl", "pii_eval_handwritten.jsonl")]


def overlaps(a: dict, b: dict, exact: bool) -> bool:
    if exact:
        return a["start"] == b["start"] and a["end"] == b["end"]
    return a["start"] < b["end"] and b["start"] < a["end"]


def evaluate(path: Path, lang: str, exact: bool, show_errors: int) -> dict:
    from modelyard.privacy import get_engine

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    engine = get_engine(lang)
    engine.find("warm up 13800138000 王小明")
    start = time.perf_counter()
    predicted = [[{"type": e.type, "start": e.start, "end": e.end} for e in engine.find(r["text"])] for r in rows]
    seconds = time.perf_counter() - start
    gold_n, gold_hit, pred_n, pred_hit, exact_hit = Counter(), Counter(), Counter(), Counter(), Counter()
    decoys = decoys_intact = 0
    errors: list[str] = []
    for row, preds in zip(rows, predicted, strict=True):
        gold = row["entities"]
        if not gold:
            decoys += 1
            decoys_intact += not preds
        for g in gold:
            gold_n[g["type"]] += 1
            match = [p for p in preds if p["type"] == g["type"] and overlaps(g, p, exact)]
            if match:
                gold_hit[g["type"]] += 1
                exact_hit[g["type"]] += any(p["start"] == g["start"] and p["end"] == g["end"] for p in match)
            else:
                errors.append(f"MISSED {g['type']} {row['text'][g['start'] : g['end']]!r} in {row['text']!r}")
        for p in preds:
            pred_n[p["type"]] += 1
            if any(g["type"] == p["type"] and overlaps(g, p, exact) for g in gold):
                pred_hit[p["type"]] += 1
            else:
                errors.append(f"WRONG  {p['type']} {row['text'][p['start'] : p['end']]!r} in {row['text']!r}")
    types = sorted(set(gold_n) | set(pred_n))
    print(
        f"\n{path.name}: {len(rows)} sentences, {sum(gold_n.values())} entities, {decoys} decoy sentences "
        f"(lang={lang}, {'exact' if exact else 'overlapping'} span match with the right type)"
    )
    print(f"{'type':<16}{'gold':>6}{'found':>7}{'recall':>8}{'pred':>6}{'precision':>11}{'exact span':>12}")
    for t in types:
        rec = gold_hit[t] / gold_n[t] if gold_n[t] else float("nan")
        prec = pred_hit[t] / pred_n[t] if pred_n[t] else float("nan")
        ex = exact_hit[t] / gold_hit[t] if gold_hit[t] else float("nan")
        print(f"{t:<16}{gold_n[t]:>6}{gold_hit[t]:>7}{rec:>8.3f}{pred_n[t]:>6}{prec:>11.3f}{ex:>12.3f}")
    total_rec = sum(gold_hit.values()) / max(1, sum(gold_n.values()))
    total_prec = sum(pred_hit.values()) / max(1, sum(pred_n.values()))
    print(
        f"{'all':<16}{sum(gold_n.values()):>6}{sum(gold_hit.values()):>7}{total_rec:>8.3f}"
        f"{sum(pred_n.values()):>6}{total_prec:>11.3f}"
    )
    share = decoys_intact / decoys if decoys else float("nan")
    print(
        f"decoys intact: {decoys_intact}/{decoys} = {share:.3f}; throughput {len(rows) / seconds:,.0f} texts/s "
        f"({seconds / len(rows) * 1000:.2f} ms/text, mean {sum(len(r['text']) for r in rows) / len(rows):.0f} chars)"
    )
    for line in errors[:show_errors]:
        print("  " + line)
    return {"recall": dict(gold_hit), "gold": dict(gold_n), "decoys_intact": share}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--lang", default="auto", choices=("auto", "en", "zh"))
    ap.add_argument("--exact", action="store_true", help="count only exact span matches")
    ap.add_argument("--errors", type=int, default=0, help="print the first N misses and false positives")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    from modelyard.privacy import get_engine

    get_engine(args.lang)
    print(f"engine built in {time.perf_counter() - t0:.1f}s (imports Presidio, loads jieba)", file=sys.stderr)
    for path in args.files:
        evaluate(path, args.lang, args.exact, args.errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
