"""Guards on training maths: the EMA the loop keeps, and the losses (label smoothing, R-Drop, distillation).

EMA approach: the loop is not patched. Two process-wide torch hooks watch a real run of the tiny BERT backbone —
``register_module_forward_pre_hook`` catches the model on its first forward pass and
``register_optimizer_step_post_hook`` copies its raw weights after every optimizer step. The exponential moving
average is then computed by hand from those copies and compared with what the run saved (``model/``) and with what
it evaluated after each epoch (``history.json``'s ``valid_loss``, recomputed from the hand-made average).

Losses: :mod:`modelyard.training.losses` holds them as pure functions; they are checked against numpy formulas
written out here. A recipe-level check confirms that ``train.label_smoothing`` reaches the loss the loop minimises.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.optim.optimizer as optim_hooks
from safetensors.numpy import load_file

from modelyard.config import load_recipe
from modelyard.training import losses
from modelyard.training.run import train
from tests.conftest import write_tiny_recipe

EMA_DECAY = 0.9  # slow enough that the first steps still weigh in: the start-up rule of the average is tested too
RTOL, ATOL = 1e-5, 1e-6  # float32 weights against a float64 hand computation


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """The runs here use ``train.num_threads: 1`` (faster on a shared 2-core box), which torch applies process-wide."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ EMA


@contextmanager
def _raw_weights_after_each_step() -> Iterator[tuple[dict[str, Any], list[dict[str, np.ndarray]]]]:
    """Yield (``{"model", "initial", …}``, one ``{name: float64 array}`` per optimizer step) while a run trains."""
    seen: dict[str, Any] = {"model": None, "foreign": 0, "initial": None}
    steps: list[dict[str, np.ndarray]] = []

    def first_forward(module: torch.nn.Module, args: Any) -> None:
        if seen["model"] is None:  # the outermost module's pre-hook fires first: the model being trained
            seen["model"] = module

    def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if seen["initial"] is None:  # the weights the run started from (w_0)
            seen["initial"] = {n: p.detach().double().cpu().numpy().copy() for n, p in seen["model"].named_parameters()}

    def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        model = seen["model"]
        own = {id(p) for p in model.parameters()}
        seen["foreign"] += sum(id(p) not in own for g in optimizer.param_groups for p in g["params"])
        steps.append({n: p.detach().double().cpu().numpy().copy() for n, p in model.named_parameters()})

    hooks = [
        torch.nn.modules.module.register_module_forward_pre_hook(first_forward),
        optim_hooks.register_optimizer_step_pre_hook(before_step),
        optim_hooks.register_optimizer_step_post_hook(after_step),
    ]
    try:
        yield seen, steps
    finally:
        for hook in hooks:
            hook.remove()


def _hand_ema(steps: list[dict[str, np.ndarray]], decay: float) -> list[dict[str, np.ndarray]]:
    """``e_1 = w_1``, ``e_t = decay · e_{t-1} + (1 − decay) · w_t`` (torch's AveragedModel: the first update copies)."""
    out = [steps[0]]
    for w in steps[1:]:
        out.append({k: decay * out[-1][k] + (1.0 - decay) * w[k] for k in w})
    return out


def _valid_loss(model: torch.nn.Module, weights: dict[str, np.ndarray], run: Path, max_length: int) -> float:
    """Mean cross-entropy on the run's valid split with ``weights`` loaded, one unpadded example at a time."""
    from transformers import AutoTokenizer

    model = copy.deepcopy(model).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v).float() for k, v in weights.items()}, False)
    assert not unexpected and all(k in dict(model.named_buffers()) for k in missing)  # only constant buffers left
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    labels = json.loads((run / "splits" / "labels.json").read_text())
    valid = pd.read_parquet(run / "splits" / "valid.parquet")
    total = 0.0
    with torch.no_grad():
        for text, label in zip(valid["text"], valid["label"], strict=True):
            ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(**ids).logits.double()
            total += torch.nn.functional.cross_entropy(logits, torch.tensor([labels.index(label)])).item()
    return total / len(valid)


def test_ema_weights_saved_and_evaluated_are_the_hand_computed_average(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path
) -> None:
    recipe = load_recipe(
        write_tiny_recipe(
            tmp_path,
            sentiment_csv,
            tiny_backbone,
            epochs=4,
            learning_rate=3e-3,
            warmup_ratio=0.0,  # warm-up would make step 1 a no-op (lr 0), hiding the EMA's start-up rule
            ema_decay=EMA_DECAY,
            metric="loss",
            num_threads=1,
        )
    )
    with _raw_weights_after_each_step() as (seen, steps):
        run = train(recipe)
    model = seen["model"]
    assert model is not None and seen["foreign"] == 0  # every optimised tensor belongs to the captured model
    history = json.loads((run / "history.json").read_text())
    assert len(steps) == history[-1]["step"] == 4 * 9  # 144 training rows / batch 16, four epochs
    ema = _hand_ema(steps, EMA_DECAY)

    # saved = the average at the end of the best epoch (selected on valid loss)
    best = json.loads((run / "manifest.json").read_text())["best_epoch"]
    expected = ema[history[best - 1]["step"] - 1]
    saved = load_file(str(run / "model" / "model.safetensors"))
    assert set(expected) <= set(saved)
    for name, value in expected.items():
        np.testing.assert_allclose(saved[name], value, rtol=RTOL, atol=ATOL, err_msg=name)
    # the check has teeth (measured: saved vs hand-made 2e-7): the raw weights are 7e-3 away and an average
    # started from the initial weights (e_0 = w_0, the other common start-up rule) 7e-5 away
    raw = steps[history[best - 1]["step"] - 1]
    from_initial = _hand_ema([seen["initial"], *steps], EMA_DECAY)[history[best - 1]["step"]]
    for other in (raw, from_initial):
        assert not all(np.allclose(saved[k], other[k], rtol=RTOL, atol=ATOL) for k in expected)

    # evaluated = the average at each epoch's end: history's valid loss is that of the hand-made average
    for entry in history:
        loss = _valid_loss(model, ema[entry["step"] - 1], run, recipe.model.max_length)
        assert loss == pytest.approx(entry["valid_loss"], abs=1e-5), entry  # measured ≤ 1e-7; raw weights ≥ 2e-4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["valid"]["loss"] == pytest.approx(history[best - 1]["valid_loss"], abs=1e-6)


# ------------------------------------------------------------------------------------------ losses

LOGITS_A = np.array([[2.0, -1.0, 0.3], [0.5, 0.2, -0.4], [-1.0, 1.5, 0.0], [0.1, 0.1, 2.2]])
LOGITS_B = np.array([[1.0, 0.0, -0.2], [-0.3, 0.9, 0.4], [0.0, 2.5, -1.1], [0.7, -0.5, 1.0]])
TARGETS = np.array([0, 1, 1, 2])


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _np_ce(z: np.ndarray, y: np.ndarray, eps: float = 0.0) -> float:
    """Label smoothing: the target is (1 − ε)·one-hot + ε/K on every class."""
    k = z.shape[1]
    target = np.full(z.shape, eps / k)
    target[np.arange(len(y)), y] += 1.0 - eps
    return float(-(target * _log_softmax(z)).sum(axis=1).mean())


def _np_kl(p_log: np.ndarray, q_log: np.ndarray) -> float:
    """Batch-mean KL(p ‖ q) from log-probabilities."""
    return float((np.exp(p_log) * (p_log - q_log)).sum(axis=1).mean())


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothed_cross_entropy(eps: float) -> None:
    got = losses.cross_entropy(_t(LOGITS_A), torch.tensor(TARGETS), label_smoothing=eps).item()
    assert got == pytest.approx(_np_ce(LOGITS_A, TARGETS, eps), abs=1e-12)
    if eps:  # smoothing changes the loss (here: raises it, the model being confident and mostly right)
        assert got != pytest.approx(_np_ce(LOGITS_A, TARGETS), abs=1e-3)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_rdrop_is_mean_of_both_passes_plus_half_alpha_symmetric_kl(eps: float) -> None:
    alpha = 0.7
    y = torch.tensor(TARGETS)
    got = losses.rdrop_loss(
        _t(LOGITS_A), _t(LOGITS_B), lambda z: losses.cross_entropy(z, y, label_smoothing=eps), alpha
    ).item()
    la, lb = _log_softmax(LOGITS_A), _log_softmax(LOGITS_B)
    expected = 0.5 * (_np_ce(LOGITS_A, TARGETS, eps) + _np_ce(LOGITS_B, TARGETS, eps))
    expected += alpha * 0.5 * (_np_kl(la, lb) + _np_kl(lb, la))
    assert got == pytest.approx(expected, abs=1e-12)
    # identical passes (no dropout): the KL term vanishes and R-Drop is the base loss
    same = losses.rdrop_loss(_t(LOGITS_A), _t(LOGITS_A), lambda z: losses.cross_entropy(z, y, eps), alpha).item()
    assert same == pytest.approx(_np_ce(LOGITS_A, TARGETS, eps), abs=1e-12)
    assert losses.symmetric_kl(_t(LOGITS_A), _t(LOGITS_B)).item() == pytest.approx(
        _np_kl(la, lb) + _np_kl(lb, la), abs=1e-12
    )


@pytest.mark.parametrize(("temperature", "alpha", "eps"), [(1.0, 0.5, 0.0), (2.0, 0.0, 0.0), (3.0, 0.3, 0.1)])
def test_distillation_is_alpha_ce_plus_t_squared_kl(temperature: float, alpha: float, eps: float) -> None:
    teacher_logits = LOGITS_B * 1.7
    tempered = np.exp(_log_softmax(teacher_logits / temperature))  # the loop passes tempered teacher probabilities
    got = losses.distillation_loss(
        _t(LOGITS_A),
        torch.tensor(TARGETS),
        _t(tempered),
        temperature=temperature,
        alpha=alpha,
        label_smoothing=eps,
    ).item()
    kl = _np_kl(np.log(tempered), _log_softmax(LOGITS_A / temperature))
    expected = alpha * _np_ce(LOGITS_A, TARGETS, eps) + (1 - alpha) * temperature**2 * kl
    assert got == pytest.approx(expected, abs=1e-12)


def test_recipe_label_smoothing_reaches_the_training_loss(
    tmp_path: Path, sentiment_csv: Path, tiny_backbone: Path
) -> None:
    """With ε = 0.4 on 2 classes no prediction gets the loss below the smoothed target's entropy (0.5004).

    Measured (per-step logged losses, 3 epochs): smoothed min 0.528, plain min 0.311 — so a recipe value that never
    reaches the loss is caught. Both runs reach test accuracy 1.0.
    """
    eps, k = 0.4, 2
    q = np.array([1 - eps + eps / k, eps / k])
    floor = float(-(q * np.log(q)).sum())
    assert floor == pytest.approx(0.5004, abs=1e-4)
    step_losses = {}
    for name, smoothing in (("plain", 0.0), ("smoothed", eps)):
        (tmp_path / name).mkdir()
        run = train(
            load_recipe(
                write_tiny_recipe(
                    tmp_path / name, sentiment_csv, tiny_backbone, epochs=3, label_smoothing=smoothing, num_threads=1
                )
            )
        )
        lines = [json.loads(x) for x in (run / "progress.jsonl").read_text().splitlines()]
        step_losses[name] = [x["loss"] for x in lines if "event" not in x]
        assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0.9  # both learn the task
    assert min(step_losses["smoothed"]) >= floor - 1e-6
    assert min(step_losses["plain"]) < floor - 0.1
    assert math.isfinite(sum(step_losses["smoothed"]))
