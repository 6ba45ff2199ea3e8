"""Differentially private training (train.privacy, Opacus DP-SGD) on tiny seeded models.

What each test pins down, independently of the code under test where it can:

* one DP step = (sum of per-example gradients, each clipped to C, + Gaussian noise from the noise seed) / the
  expected batch — recomputed here one example at a time on a hook-free copy of the model;
* the spent ε in metrics.json / manifest.json equals the RDP bound recomputed from (σ, q, steps);
* a budget smaller than the planned epochs stops training before the step that would exceed it;
* a layer Opacus cannot handle is named at load time, with the scopes that work, and the suggested scope trains;
* an interrupted DP run resumes to the same weights and the same accounting.
"""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant
from rich.console import Console
from safetensors.numpy import load_file

from modelyard.config import load_recipe, recipe_from_dict
from modelyard.errors import ConfigError, ModelyardError
from modelyard.training.loop import TrainingInterrupted
from modelyard.training.privacy import DPTraining
from modelyard.training.run import train
from tests.conftest import synthetic_sentiment, write_tiny_recipe


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """ε of ``steps`` Poisson-subsampled Gaussian steps, from Opacus's RDP analysis (not its accountant class)."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    return float(
        get_privacy_spent(
            orders=orders, rdp=compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders), delta=delta
        )[0]
    )


# ---------------------------------------------------------------------------------------------- the mechanism
def _tiny_dp(
    tiny_backbone: Path, n_train: int = 40, **privacy: object
) -> tuple[DPTraining, torch.nn.Module, torch.nn.Module]:
    """A tiny BERT classifier wrapped for DP (dropout off), and a hook-free copy of its initial weights."""
    from modelyard.kinds import get_kind

    recipe = recipe_from_dict(
        {
            "data": {"path": "unused.csv"},
            "model": {"backbone": str(tiny_backbone), "max_length": 32},
            "train": {"batch_size": 4, "gradient_accumulation_steps": 2, "epochs": 1, "privacy": privacy},
        }
    )
    torch.manual_seed(0)
    model, _ = get_kind("hf-encoder").build(recipe.model, ["neg", "pos"], Path("."))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    reference = copy.deepcopy(model)
    dp = DPTraining(recipe, model, n_train, None, _quiet())
    params = [p for p in model.parameters() if p.requires_grad]
    dp.wrap(torch.optim.AdamW(params, lr=1e-3))
    model.train()
    return dp, model, reference


def _batch(tiny_backbone: Path, n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    from transformers import AutoTokenizer

    from modelyard._internal.batching import pad_batch

    frame = synthetic_sentiment(n, seed=seed)
    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    inputs = pad_batch(tok(frame["text"].tolist(), truncation=True, max_length=32)["input_ids"], tok.pad_token_id)
    return inputs, torch.as_tensor((frame["label"] == "pos").to_numpy().astype(np.int64))


def _per_example_grads(reference: torch.nn.Module, names: list[str], inputs: dict, y: torch.Tensor) -> list[dict]:
    """Each example's own gradient, one forward/backward per example on the hook-free copy."""
    reference.train()
    params = dict(reference.named_parameters())
    out = []
    for i in range(len(y)):
        logits = reference(**{k: v[i : i + 1] for k, v in inputs.items()}).logits
        loss = torch.nn.functional.cross_entropy(logits, y[i : i + 1])
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        out.append(dict(zip(names, grads, strict=True)))
    return out


def _dp_step(dp: DPTraining, model: torch.nn.Module, micro_batches: list) -> dict[str, torch.Tensor]:
    """Forward/backward each micro-batch as the loop does, then Opacus's clip + noise + scale (no weight update)."""
    for inputs, y in micro_batches:
        if len(y) == 0:
            dp.empty_batch()
            continue
        logits = dp.module(**inputs).logits
        torch.nn.functional.cross_entropy(logits, y).backward()
    assert dp.optimizer.pre_step()
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: p.grad.detach().clone() for p in dp.optimizer.params}


@pytest.mark.parametrize("sigma", [0.0, 0.7], ids=["no-noise", "noise"])
def test_dp_step_is_mean_of_clipped_per_example_gradients_plus_seeded_noise(tiny_backbone: Path, sigma: float) -> None:
    clip = 0.05
    dp, model, reference = _tiny_dp(tiny_backbone, noise_multiplier=sigma, max_grad_norm=clip, noise_seed=11)
    inputs, y = _batch(tiny_backbone, 7, seed=5)
    halves = [({k: v[:4] for k, v in inputs.items()}, y[:4]), ({k: v[4:] for k, v in inputs.items()}, y[4:])]
    got = _dp_step(dp, model, halves)  # two micro-batches: gradient accumulation

    names = list(got)
    per_example = _per_example_grads(reference, names, inputs, y)
    norms = [math.sqrt(sum(float(g.pow(2).sum()) for g in ex.values())) for ex in per_example]
    assert min(norms) > 2 * clip  # clipping really acts on every example
    generator = torch.Generator().manual_seed(11)
    expected_batch = 4 * 2  # batch_size × gradient_accumulation_steps, not the 7 drawn
    for name, p in ((n, dict(model.named_parameters())[n]) for n in names):
        clipped = sum(ex[name] * min(1.0, clip / (norm + 1e-6)) for ex, norm in zip(per_example, norms, strict=True))
        noise = torch.normal(0.0, sigma * clip, p.shape, generator=generator) if sigma else torch.zeros_like(p)
        np.testing.assert_allclose(
            got[name].numpy(), ((clipped + noise) / expected_batch).numpy(), atol=2e-6, rtol=1e-4, err_msg=name
        )
    # the unclipped mean would be far off: the assertion above can fail
    name = names[0]
    unclipped = sum(ex[name] for ex in per_example) / expected_batch
    assert not torch.allclose(got[name], unclipped, atol=1e-4)


def test_two_noise_seeds_differ_by_exactly_the_noise(tiny_backbone: Path) -> None:
    inputs, y = _batch(tiny_backbone, 6, seed=2)
    grads = {}
    for seed in (1, 2):
        dp, model, _ = _tiny_dp(tiny_backbone, noise_multiplier=1.3, max_grad_norm=0.5, noise_seed=seed)
        grads[seed] = _dp_step(dp, model, [(inputs, y), ({k: v[:0] for k, v in inputs.items()}, y[:0])])
        params = list(dp.optimizer.params)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    for (name, a), b, p in zip(grads[1].items(), grads[2].values(), params, strict=True):
        diff = (
            torch.normal(0.0, 1.3 * 0.5, p.shape, generator=g1) - torch.normal(0.0, 1.3 * 0.5, p.shape, generator=g2)
        ) / 8
        np.testing.assert_allclose((a - b).numpy(), diff.numpy(), atol=1e-6, err_msg=name)


def test_an_empty_poisson_draw_still_steps_with_noise_only(tiny_backbone: Path) -> None:
    dp, model, _ = _tiny_dp(tiny_backbone, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=3)
    inputs, y = _batch(tiny_backbone, 2, seed=1)
    empty = ({k: v[:0] for k, v in inputs.items()}, y[:0])
    got = _dp_step(dp, model, [empty, empty])
    generator = torch.Generator().manual_seed(3)
    for name, p in zip(got, dp.optimizer.params, strict=True):
        np.testing.assert_allclose(
            got[name].numpy(), (torch.normal(0.0, 1.0, p.shape, generator=generator) / 8).numpy(), atol=1e-7
        )


def test_poisson_order_is_seeded_accumulation_aligned_and_cut_at_the_budget(tiny_backbone: Path) -> None:
    dp, _, _ = _tiny_dp(tiny_backbone, n_train=40, noise_multiplier=2.5, epsilon=1.0, noise_seed=4)
    assert dp.steps_per_epoch == 5 and dp.sample_rate == pytest.approx(0.2)  # ceil(40 / (4 × 2))
    a, b = dp.order(0), dp.order(0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # a pure function of (seed, epoch)
    assert dp.max_steps is not None and 0 < dp.max_steps < dp.steps_per_epoch  # a budget smaller than one epoch
    assert len(a) == dp.max_steps * 2 and dp.order(1) == []  # cut there: two micro-batches per step
    # draws are independent across steps and epochs: over many draws each example's rate is q
    counts = np.zeros(40)
    dp.max_steps = None
    for epoch in range(200):
        for chunk in dp.order(epoch):
            counts[chunk] += 1
    assert abs(counts.mean() / (200 * 5) - 0.2) < 0.01


# ---------------------------------------------------------------------------------------------- the run
@pytest.fixture()
def data_csv(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.csv"
    synthetic_sentiment(160).to_csv(path, index=False)
    return path


def _recipe(tmp_path: Path, data: Path, backbone: Path, privacy: dict, **train_kw: object):
    return load_recipe(write_tiny_recipe(tmp_path, data, backbone, privacy=privacy, **({"epochs": 2} | train_kw)))


def test_dp_run_reports_the_accountants_epsilon_in_metrics_manifest_and_report(
    tmp_path: Path, data_csv: Path, tiny_backbone: Path
) -> None:
    run = train(_recipe(tmp_path, data_csv, tiny_backbone, {"epsilon": 3.0, "noise_seed": 1}), console=_quiet())
    record = json.loads((run / "metrics.json").read_text())["privacy"]
    manifest = json.loads((run / "manifest.json").read_text())
    n_train = json.loads((run / "data_report.json").read_text())["split_sizes"]["train"]
    steps_per_epoch = math.ceil(n_train / 16)
    assert record["sample_rate"] == pytest.approx(1 / steps_per_epoch)
    assert record["steps"] == manifest["total_steps"] == 2 * steps_per_epoch  # one accountant step per update
    assert record["delta"] == pytest.approx(min(1e-5, 0.1 / n_train))
    independent = _rdp_epsilon(record["noise_multiplier"], 1 / steps_per_epoch, record["steps"], record["delta"])
    assert record["epsilon"] == pytest.approx(independent, rel=1e-9)
    assert 2.9 < record["epsilon"] <= 3.0  # σ was calibrated to spend the budget over the planned steps
    assert manifest["privacy"]["epsilon"] == record["epsilon"] and not record["stopped_by_budget"]
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "privacy (ε, δ)" in html and f"ε = {record['epsilon']:.3f}" in html
    from modelyard.ops.runs import show_run

    lines, table, _ = show_run(run)
    assert dict(lines)["privacy"].startswith(f"ε {record['epsilon']:.4f}")
    assert [cell for cell in table.columns[0].cells] == ["valid", "test"]  # the record is not a split


def test_budget_smaller_than_the_planned_epochs_stops_training_with_a_message(
    tmp_path: Path, data_csv: Path, tiny_backbone: Path
) -> None:
    out = io.StringIO()
    sigma, eps = 2.0, 2.0
    run = train(
        _recipe(
            tmp_path, data_csv, tiny_backbone, {"epsilon": eps, "noise_multiplier": sigma, "noise_seed": 2}, epochs=4
        ),
        console=Console(file=out, width=300),
    )
    record = json.loads((run / "metrics.json").read_text())["privacy"]
    q, delta = record["sample_rate"], record["delta"]
    allowed = max(k for k in range(1, record["planned_steps"] + 1) if _rdp_epsilon(sigma, q, k, delta) <= eps)
    assert allowed < record["planned_steps"]
    assert record["steps"] == allowed and record["stopped_by_budget"]
    assert record["epsilon"] <= eps < _rdp_epsilon(sigma, q, allowed + 1, delta)
    text = out.getvalue()
    assert f"allows {allowed} of the {record['planned_steps']} planned steps" in text
    assert f"privacy budget: stopping after step {allowed} of {record['planned_steps']} planned" in text
    assert json.loads((run / "manifest.json").read_text())["stopped_early"] is True


def test_same_noise_seed_reproduces_and_another_changes_only_through_the_noise(
    tmp_path: Path, data_csv: Path, tiny_backbone: Path
) -> None:
    def weights(name: str, **privacy: object) -> dict[str, np.ndarray]:
        # batch ≥ the training split: q = 1, so the draws are the same for every seed and only the noise can differ
        (tmp_path / name).mkdir()
        recipe = _recipe(tmp_path / name, data_csv, tiny_backbone, {"max_grad_norm": 0.5, **privacy}, batch_size=256)
        return load_file(str(train(recipe, console=_quiet()) / "model" / "model.safetensors"))

    a = weights("a", noise_multiplier=1.0, noise_seed=1)
    b = weights("b", noise_multiplier=1.0, noise_seed=1)
    c = weights("c", noise_multiplier=1.0, noise_seed=2)
    z1 = weights("z1", noise_multiplier=0.0, noise_seed=1)
    z2 = weights("z2", noise_multiplier=0.0, noise_seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.allclose(a[k], c[k]) for k in a)
    assert all(np.array_equal(z1[k], z2[k]) for k in z1)  # without noise the seed changes nothing


def test_resume_with_privacy_matches_the_uninterrupted_run(tmp_path: Path, data_csv: Path, tiny_backbone: Path) -> None:
    recipe = _recipe(
        tmp_path, data_csv, tiny_backbone, {"noise_multiplier": 0.8, "noise_seed": 5}, checkpoint_every_steps=3
    )
    reference = train(recipe, console=_quiet())
    with pytest.raises(TrainingInterrupted):
        train(recipe, stop_after_step=10, console=_quiet())
    (partial,) = list((tmp_path / "runs").glob("*.incomplete"))
    state = json.loads((partial / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["privacy"]["history"] and "generator" in state["privacy"]  # JSON, not a pickle
    resumed = train(recipe, resume=partial, console=_quiet())
    a = load_file(str(reference / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0, err_msg=k)
    ra = json.loads((reference / "metrics.json").read_text())["privacy"]
    rb = json.loads((resumed / "metrics.json").read_text())["privacy"]
    assert ra["steps"] == rb["steps"] and ra["epsilon"] == pytest.approx(rb["epsilon"], rel=1e-12)


# ---------------------------------------------------------------------------------------------- layers and scopes
def test_bilstm_is_refused_naming_the_lstm_and_the_suggested_head_scope_trains(tmp_path: Path, data_csv: Path) -> None:
    import yaml

    raw = {
        "name": "dp-bilstm",
        "data": {"path": str(data_csv), "valid_size": 0.2, "test_size": 0.2, "seed": 3},
        "model": {"type": "bilstm", "max_length": 24, "arch": {"embedding_dim": 8, "hidden_size": 8, "num_layers": 1}},
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 0.05, "privacy": {"epsilon": 8, "noise_seed": 1}},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelyardError) as err:
        train(load_recipe(path), console=_quiet())
    message = str(err.value)
    assert "lstm (LSTM)" in message and "train.privacy.scope: head" in message
    assert not list((tmp_path / "runs").glob("*"))  # refused at load time: nothing left behind

    raw["train"]["privacy"]["scope"] = "head"
    path.write_text(yaml.safe_dump(raw))
    out = io.StringIO()
    run = train(load_recipe(path), console=Console(file=out, width=300))
    assert json.loads((run / "metrics.json").read_text())["privacy"]["scope"] == "head"
    assert "outside the guarantee" in out.getvalue()  # the learned tokenizer is named as not covered


def test_batchnorm_model_is_refused_and_head_scope_freezes_the_rest_in_eval_mode() -> None:
    from modelyard.kinds import get_kind

    def build(scope: str) -> tuple[torch.nn.Module, DPTraining]:
        recipe = recipe_from_dict(
            {
                "task": "image-classification",
                "data": {"path": "images"},
                "model": {"type": "cnn-small"},
                "train": {"batch_size": 4, "privacy": {"noise_multiplier": 1.0, "scope": scope, "noise_seed": 0}},
            }
        )
        torch.manual_seed(0)
        model, _ = get_kind("cnn-small").build(
            recipe.model, ["a", "b"], Path("."), image_shape=[1, 8, 8], normalization={"mean": [0.5], "std": [0.5]}
        )
        return model, DPTraining(recipe, model, 20, None, _quiet())

    with pytest.raises(ModelyardError, match=r"body\.1 \(BatchNorm2d\): batch statistics mix") as err:
        build("all")
    assert "train.privacy.scope: head" in str(err.value)
    model, dp = build("head")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)
    optimizer = dp.wrap(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1))
    assert {id(p) for p in optimizer.params} == {id(p) for p in model.parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    model.train()
    x = torch.rand(5, 1, 8, 8)
    torch.nn.functional.cross_entropy(dp.module(pixel_values=x).logits, torch.tensor([0, 1, 0, 1, 1])).backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers() if n in stats)  # BN ran on running stats


def test_top_scope_trains_the_top_layers_and_head_only(tiny_backbone: Path) -> None:
    _, model, _ = _tiny_dp(tiny_backbone, noise_multiplier=1.0, scope="top:1")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")) for n in trainable)
    assert any(n.startswith("classifier.") for n in trainable) and any(".layer.1." in n for n in trainable)
    with pytest.raises(ConfigError, match="has 2 layers"):
        _tiny_dp(tiny_backbone, noise_multiplier=1.0, scope="top:3")


def test_privacy_refuses_what_would_break_the_guarantee() -> None:
    base = {"data": {"path": "x.csv"}}
    with pytest.raises(ConfigError, match="needs epsilon"):
        recipe_from_dict(base | {"train": {"privacy": {"delta": 1e-5}}})
    with pytest.raises(ConfigError, match="rdrop_alpha"):
        recipe_from_dict(base | {"train": {"rdrop_alpha": 1.0, "privacy": {"epsilon": 1}}})
    with pytest.raises(ConfigError, match="bf16/fp16"):
        recipe_from_dict(base | {"train": {"precision": "bf16", "privacy": {"epsilon": 1}}})
    recipe = recipe_from_dict(base | {"model": {"type": "tfidf-logreg"}, "train": {"privacy": {"epsilon": 1}}})
    with pytest.raises(ConfigError, match="one-shot fit"):
        train(recipe, console=_quiet())
