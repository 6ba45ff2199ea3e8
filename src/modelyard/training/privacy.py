"""Differentially private fine-tuning (``train.privacy``): DP-SGD with Opacus inside the shared loop.

What the loop (:class:`~modelyard.training.loop.FineTuneRecipe`) asks of this module, and what holds:

* **Which weights train.** ``scope`` (``all`` | ``head`` | ``top:N``) freezes the rest before the optimizer is
  built; frozen weights are neither wrapped nor noised. Layers Opacus cannot give per-example gradients to
  (BatchNorm, ``nn.LSTM``, ``nn.MultiheadAttention``, a module holding buffers next to its own weights) are
  named at load time together with the scopes that leave them frozen. Frozen BatchNorm layers run on their
  running statistics (eval mode) while training, so that no example's output depends on the others in its batch.
* **Per-example gradients and the mechanism.** Opacus's ``GradSampleModule`` computes each example's gradient;
  its ``DPOptimizer`` clips each one to ``max_grad_norm`` (C), sums them, adds Gaussian noise N(0, σ²C²) once per
  optimizer step and divides by the *expected* logical batch size (``batch_size × gradient_accumulation_steps``),
  never by the drawn one (that would leak the batch size).
* **Sampling.** The accountant's bound assumes Poisson subsampling: every training example joins each logical
  batch independently with probability q = 1 / steps_per_epoch (Opacus's ``DPDataLoader`` does the same). The
  length-grouped batches of :mod:`~modelyard.training.batch_sources` would not give that guarantee, so under
  privacy :meth:`DPTraining.order` replaces them: each epoch is ``steps_per_epoch`` independent Poisson draws,
  each cut into ``gradient_accumulation_steps`` micro-batches whose per-example gradients are concatenated before
  clipping (Opacus's own accumulation) — a micro-batch can be empty; its step still adds the noise.
* **The guarantee** is (ε, δ)-DP with respect to adding or removing one row of the *training split*, for the
  weights released after any number of steps, as computed by Opacus's RDP (default) or PRV accountant from
  (σ, q, steps). Not covered: the validation split used to pick the best epoch and the metrics, and a tokenizer
  learned from the training texts (textcnn, bilstm, transformer-encoder; a warning says so). The sampling and
  noise come from ``noise_seed`` or, by default, from fresh OS randomness kept only in the checkpoints.
* **Budget.** With only ``epsilon``, σ is calibrated (``opacus.accountants.utils.get_noise_multiplier``) so that
  the planned steps spend at most ε. With ``epsilon`` and ``noise_multiplier``, the largest number of steps within
  ε is computed up front; the epoch order is cut there and training stops before the step that would exceed ε,
  with a message. The accountant's history, σ, q, the seed and the noise generator are checkpointed as JSON, so
  ``--resume`` continues the same accounting exactly.
"""

from __future__ import annotations

import base64
import math
import re
import secrets
import warnings
from typing import Any

import numpy as np
import torch
from rich.console import Console

from modelyard.config import Recipe
from modelyard.errors import ConfigError, ModelyardError

# Numbered encoder layers in parameter names (the same pattern as the loop's layer-wise learning rates).
_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")
_HEAD_NAMES = ("classifier", "head", "score")
_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def require_privacy(recipe: Recipe, kind: Any) -> None:
    """Checks before a run directory exists: the kind trains in the shared classifier loop, Opacus is installed."""
    if recipe.train.privacy is None:
        return
    if not kind.trains_in_loop or kind.can("generative"):
        what = "a one-shot fit" if not kind.trains_in_loop else "a generative model"
        raise ConfigError(
            f"train.privacy trains a classifier with DP-SGD in the shared loop; model.type '{kind.name}' is {what}"
        )
    if kind.can("learns_from_split"):
        raise ConfigError(
            f"train.privacy: model.type '{kind.name}' tunes its body on the training split before the loop, outside "
            "DP-SGD's guarantee; use model.type hf-encoder"
        )
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise ConfigError("train.privacy needs the opacus package: pip install opacus") from None


def default_delta(n_train: int) -> float:
    """δ when the recipe gives none: ``min(1e-5, 0.1 / n)`` — well below 1/n, the level at which (ε, δ)-DP is void."""
    return min(1e-5, 0.1 / max(n_train, 1))


def epsilon_for(accountant: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε spent by ``steps`` Poisson-sampled steps of the Gaussian mechanism (Opacus's accountant of that name)."""
    from opacus.accountants import create_accountant

    if steps <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha": the bound still holds
        return float(acc.get_epsilon(delta))


def max_steps_within(accountant: str, noise_multiplier: float, sample_rate: float, delta: float, eps: float) -> int:
    """The largest number of steps whose ε stays within ``eps`` (binary search; ε grows with the steps)."""
    hi = 1
    while epsilon_for(accountant, noise_multiplier, sample_rate, hi, delta) <= eps:
        hi *= 2
        if hi > 1 << 40:
            return hi
    lo = hi // 2  # ε(lo) ≤ eps (or lo = 0), ε(hi) > eps
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if epsilon_for(accountant, noise_multiplier, sample_rate, mid, delta) <= eps:
            lo = mid
        else:
            hi = mid
    return lo


def _depth_of(names: list[str], model: torch.nn.Module) -> tuple[int, dict[str, int]]:
    """Number of encoder layers, and each parameter's depth: 0 embeddings, i+1 layer i, L+1 above the encoder."""
    found = [int(m.group(1)) for n in names if (m := _LAYER_INDEX.search("." + n))]
    config = getattr(_inner(model), "config", None)
    n_layers = int(getattr(config, "num_hidden_layers", 0) or 0) or (max(found) + 1 if found else 0)
    depth = {}
    for name in names:
        m = _LAYER_INDEX.search("." + name)
        depth[name] = int(m.group(1)) + 1 if m else 0 if "embed" in name else n_layers + 1
    return (n_layers if found else 0), depth


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    """The classifier under a peft wrapper (``model.finetune: lora``), else the model itself."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _head_ids(model: torch.nn.Module) -> set[int]:
    """Parameters of the classification head: outside the backbone (``base_model_prefix``), else the children
    named classifier/head/score."""
    inner = _inner(model)
    backbone = getattr(inner, str(getattr(inner, "base_model_prefix", "") or "-"), None)
    if isinstance(backbone, torch.nn.Module):
        inside = {id(p) for p in backbone.parameters()}
        return {id(p) for p in inner.parameters() if id(p) not in inside}
    return {id(p) for name, child in inner.named_children() if name in _HEAD_NAMES for p in child.parameters()}


def scope_selection(model: torch.nn.Module, scope: str) -> set[int]:
    """Ids of the parameters ``scope`` trains (before intersecting with what ``model.finetune`` trains).

    Raises:
        ConfigError: the model has no recognisable head, or no numbered layers for ``top:N``.
    """
    named = list(model.named_parameters())
    if scope == "all":
        return {id(p) for _, p in named}
    head = _head_ids(model)
    if not head:
        raise ConfigError(f"train.privacy.scope {scope}: no classification head found in this model; use scope all")
    if scope == "head":
        return head
    n = int(scope.removeprefix("top:"))
    n_layers, depth = _depth_of([name for name, _ in named], model)
    if not n_layers:
        raise ConfigError(f"train.privacy.scope {scope}: this model has no numbered layers; use scope head or all")
    if n > n_layers:
        raise ConfigError(f"train.privacy.scope {scope}: the model has {n_layers} layers; use top:1 … top:{n_layers}")
    return head | {id(p) for name, p in named if depth[name] > n_layers - n}


def unsupported_layers(model: torch.nn.Module, selected: set[int]) -> dict[str, str]:
    """Layers Opacus cannot give per-example gradients to, among those with a weight in ``selected``: name → why."""
    from opacus.validators import ModuleValidator

    problems = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) in selected]
        if not own:
            continue
        label = f"{name or '(the model itself)'} ({type(module).__name__})"
        if isinstance(module, _BATCH_NORMS):
            problems[label] = "batch statistics mix the examples of a batch"
            continue
        validator = ModuleValidator.VALIDATORS.get(type(module))
        errors = validator(module) if validator is not None else []
        if errors:
            problems[label] = f"needs Opacus's replacement module ({type(errors[0]).__name__})"
        elif any(True for _ in module.buffers()):
            problems[label] = "holds buffers next to its own trainable weights"
    return problems


def _per_example_embeddings(model: torch.nn.Module) -> None:
    """Give trainable embeddings one input row per example.

    BERT-style models look up position embeddings once, ``(1, seq)``, and broadcast the result over the batch;
    Opacus would then see one "example" for that layer. A pre-hook expands such an input to the batch size
    (the model's output is unchanged), so each example gets its own gradient for those rows.
    """
    seen: dict[str, int] = {}

    def batch_size(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        first = next((v for v in (*args, *kwargs.values()) if torch.is_tensor(v) and v.dim() > 0), None)
        seen["n"] = int(first.shape[0]) if first is not None else 0

    def expand(module: torch.nn.Module, args: tuple) -> tuple | None:
        n, x = seen.get("n", 0), args[0]
        return (x.expand(n, *x.shape[1:]), *args[1:]) if n > 1 and x.dim() > 1 and x.shape[0] == 1 else None

    model.register_forward_pre_hook(batch_size, with_kwargs=True)
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and any(p.requires_grad for p in module.parameters(False)):
            module.register_forward_pre_hook(expand)


def _trainable(model: torch.nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def _working_scopes(model: torch.nn.Module, trainable: set[int], settings: Any) -> list[str]:
    """The scopes under which no selected layer is a problem for Opacus (what the refusal offers)."""
    good = []
    n_layers, _ = _depth_of([n for n, _ in model.named_parameters()], model)
    for scope in ["head", *(f"top:{n}" for n in range(n_layers, 0, -1))]:
        try:
            selected = scope_selection(model, scope) & trainable
        except ConfigError:
            continue
        if selected and not unsupported_layers(model, selected):
            good.append(f"train.privacy.scope: {scope}")
            if scope.startswith("top:"):
                break  # the largest N that works; smaller ones do too
    if "finetune" in type(settings).model_fields and getattr(settings, "finetune", None) != "lora":
        good.append("model.finetune: lora (adapters + head, with scope all)")
    return good


class DPTraining:
    """The DP-SGD machinery of one run: scope, per-example gradients, DP optimizer, Poisson batches, accountant."""

    def __init__(self, recipe: Recipe, model: torch.nn.Module, n_train: int, lengths: Any, console: Console) -> None:
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier

        cfg, spec = recipe.train, recipe.train.privacy
        assert spec is not None
        self.spec, self.console, self.n_train = spec, console, n_train
        self.lengths = None if lengths is None else np.asarray(lengths)
        before = _trainable(model)
        selected = scope_selection(model, spec.scope) & before
        problems = unsupported_layers(model, selected)
        if problems:
            offer = _working_scopes(model, before, recipe.model)
            raise ModelyardError(
                f"train.privacy: Opacus cannot compute per-example gradients for "
                f"{'; '.join(f'{k}: {v}' for k, v in problems.items())} (scope {spec.scope}). "
                + (f"Modes that work with this model: {', '.join(offer)}." if offer else "No scope avoids them.")
            )
        if not selected:
            raise ModelyardError(f"train.privacy.scope {spec.scope} leaves no trainable weights in this model")
        for p in model.parameters():
            p.requires_grad_(id(p) in selected)
        frozen_bn = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
        for module in frozen_bn:  # frozen here (else refused above): use running statistics, never batch ones
            module.register_forward_pre_hook(lambda m, args: setattr(m, "training", False))
        _per_example_embeddings(model)
        for module in model.modules():  # an in-place op on a hooked layer's output breaks the hooks' autograd
            if getattr(module, "inplace", None) is True:
                module.inplace = False
        self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
        # Opacus's hooks on embeddings (integer inputs) make torch warn once per layer; nothing is wrong
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")

        self.accum = cfg.gradient_accumulation_steps
        self.expected_batch = cfg.batch_size * self.accum  # the logical batch, in expectation
        self.steps_per_epoch = math.ceil(n_train / self.expected_batch)
        self.sample_rate = 1.0 / self.steps_per_epoch  # as Opacus's DPDataLoader: q = 1 / len(data_loader)
        self.planned_steps = self.steps_per_epoch * cfg.epochs
        self.delta = spec.delta if spec.delta is not None else default_delta(n_train)
        if spec.noise_multiplier is not None:
            self.noise_multiplier = float(spec.noise_multiplier)
        else:
            assert spec.epsilon is not None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # RDP: "optimal order is the largest alpha"
                self.noise_multiplier = float(
                    get_noise_multiplier(
                        target_epsilon=spec.epsilon,
                        target_delta=self.delta,
                        sample_rate=self.sample_rate,
                        steps=self.planned_steps,
                        accountant=spec.accountant,
                    )
                )
        self.max_steps: int | None = None
        if spec.epsilon is not None:
            self.max_steps = max_steps_within(
                spec.accountant, self.noise_multiplier, self.sample_rate, self.delta, spec.epsilon
            )
            if self.max_steps == 0:
                raise ModelyardError(
                    f"train.privacy: with noise_multiplier {self.noise_multiplier:g} and sample rate "
                    f"{self.sample_rate:.4g}, one step already spends more than ε = {spec.epsilon:g}; raise the "
                    "noise_multiplier or the epsilon (or leave noise_multiplier out to calibrate it)"
                )
        self.accountant = create_accountant(spec.accountant)
        self.seed = spec.noise_seed if spec.noise_seed is not None else secrets.randbits(63)
        self.generator: torch.Generator | None = None
        self.caveats = []
        if n_train and self.delta >= 1.0 / n_train:
            self.caveats.append(f"δ = {self.delta:g} is not below 1/n = {1 / n_train:.3g}: a weak guarantee")
        self._announce(model, before, selected)

    def _announce(self, model: torch.nn.Module, before: set[int], selected: set[int]) -> None:
        spec, n = self.spec, sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.console.print(
            f"[bold]privacy[/] DP-SGD (Opacus) · scope {spec.scope}: {n:,} weights train with per-example clipping "
            f"to {spec.max_grad_norm:g} · noise σ = {self.noise_multiplier:.4g}"
            f"{' (calibrated to ε)' if spec.noise_multiplier is None else ''} · Poisson sampling q = "
            f"{self.sample_rate:.4g} (expected batch {self.expected_batch}) · δ = {self.delta:.3g} · "
            f"{spec.accountant.upper()} accountant · planned {self.planned_steps} steps → ε = "
            f"{self._fmt(self.epsilon_at(self.planned_steps))}"
        )
        if self.max_steps is not None and self.max_steps < self.planned_steps:
            self.console.print(
                f"[yellow]privacy: the budget ε = {spec.epsilon:g} allows {self.max_steps} of the {self.planned_steps} "
                f"planned steps ({self.max_steps / self.steps_per_epoch:.2f} of the epochs): training will stop "
                "there[/]"
            )
        if len(selected) < len(before):
            self.console.print(f"privacy: {len(before) - len(selected)} weight tensors frozen by scope {spec.scope}")

    @classmethod
    def for_loop(cls, ft: Any) -> DPTraining:
        """The machinery for a :class:`~modelyard.training.loop.FineTuneRecipe` whose model and splits are built."""
        train = ft.splits["train"]
        lengths = train.lengths if hasattr(train, "ids") else None  # text: similar lengths share a micro-batch
        dp = cls(ft.recipe, ft.model, len(train.labels), lengths, ft.console)
        if ft.kind.can("learns_tokenizer"):  # a non-private function of the training texts: say so, record it
            dp.caveats.append("the tokenizer's vocabulary is learned from the training texts, outside the guarantee")
            ft.console.print(f"[yellow]privacy: {dp.caveats[-1]}[/]")
        return dp

    # ------------------------------------------------------------------ the loop's questions
    def wrap(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The loop's optimizer as Opacus's ``DPOptimizer``: clip per example, add noise, account each step."""
        from opacus.optimizers import DPOptimizer

        device = next(p for p in self.module.parameters() if p.requires_grad).device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.spec.max_grad_norm,
            # scale_grad divides by expected_batch_size × the micro-batches accumulated (always `accum` here)
            expected_batch_size=self.expected_batch / self.accum,  # type: ignore[arg-type]
            loss_reduction="mean",
            generator=self.generator,
        )
        self.optimizer.attach_step_hook(self._account)
        return self.optimizer

    def _account(self, optimizer: Any) -> None:
        if self.max_steps is not None and self.steps_taken >= self.max_steps:  # order() never gets here
            raise ModelyardError(f"train.privacy: step {self.steps_taken + 1} would exceed ε = {self.spec.epsilon:g}")
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def order(self, epoch: int) -> list[np.ndarray]:
        """The epoch's micro-batches: ``steps_per_epoch`` Poisson draws, each cut into ``accum`` pieces.

        A pure function of (seed, epoch), so resuming at a batch is exact. Cut at the budget: no step past it.
        """
        rng = np.random.default_rng([self.seed, epoch])
        steps = self.steps_per_epoch
        if self.max_steps is not None:
            steps = max(0, min(steps, self.max_steps - epoch * self.steps_per_epoch))
        chunks: list[np.ndarray] = []
        for _ in range(self.steps_per_epoch):
            drawn = np.flatnonzero(rng.random(self.n_train) < self.sample_rate)
            if self.lengths is not None:  # similar lengths in one micro-batch: less padding, same logical batch
                drawn = drawn[np.argsort(self.lengths[drawn], kind="stable")]
            chunks.extend(np.array_split(drawn, self.accum))
        return chunks[: steps * self.accum]

    def empty_batch(self) -> None:
        """A micro-batch with no example: record zero per-example gradients, so the step's noise is still added."""
        for p in self.optimizer.params:
            none = p.new_zeros((0, *p.shape))
            gs = getattr(p, "grad_sample", None)
            p.grad_sample = none if gs is None else [*gs, none] if isinstance(gs, list) else [gs, none]

    def exhausted(self, global_step: int) -> bool:
        """Whether the budget allows no further step."""
        return self.max_steps is not None and global_step >= self.max_steps

    def stop_at_budget(self, global_step: int, epochs_left: bool) -> bool:
        """At the end of an epoch: whether the budget ends training here (and if so, say so)."""
        if not (epochs_left and self.exhausted(global_step)):
            return False
        self.console.print(
            f"[yellow]privacy budget: stopping after step {global_step} of {self.planned_steps} planned — one more "
            f"step would spend more than ε = {self.spec.epsilon:g} (δ = {self.delta:.3g}); spent ε = "
            f"{self._fmt(self.epsilon())}[/]"
        )
        return True

    # ------------------------------------------------------------------ reporting
    @property
    def steps_taken(self) -> int:
        return sum(int(steps) for _, _, steps in self.accountant.history)

    def epsilon_at(self, steps: int) -> float:
        return epsilon_for(self.spec.accountant, self.noise_multiplier, self.sample_rate, steps, self.delta)

    def epsilon(self) -> float:
        """ε spent so far, from the accountant's own history."""
        if not self.accountant.history:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(self.accountant.get_epsilon(self.delta))

    @staticmethod
    def _fmt(eps: float) -> str:
        return "∞ (no noise)" if math.isinf(eps) else f"{eps:.4g}"

    def summary(self) -> dict[str, Any]:
        """The privacy record written into ``metrics.json`` and ``manifest.json`` (ε null when infinite)."""
        eps = self.epsilon()
        steps = self.steps_taken
        return {
            "epsilon": None if math.isinf(eps) else eps,
            "epsilon_infinite": math.isinf(eps),
            "delta": self.delta,
            "target_epsilon": self.spec.epsilon,
            "accountant": self.spec.accountant,
            "mechanism": "DP-SGD: per-example clipping + Gaussian noise, Poisson sampling (Opacus)",
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.spec.max_grad_norm,
            "sample_rate": self.sample_rate,
            "expected_batch_size": self.expected_batch,
            "steps": steps,
            "planned_steps": self.planned_steps,
            "stopped_by_budget": steps < self.planned_steps and self.exhausted(steps),
            "scope": self.spec.scope,
            "caveats": list(self.caveats),
        }

    def info(self) -> dict[str, Any]:
        """The report's line about privacy."""
        s = self.summary()
        eps = "∞ (no noise)" if s["epsilon_infinite"] else f"{s['epsilon']:.3f}"
        stop = " · stopped at the budget" if s["stopped_by_budget"] else ""
        return {
            "privacy (ε, δ)": f"ε = {eps}, δ = {s['delta']:.3g} · {s['accountant'].upper()} accountant · σ = "
            f"{s['noise_multiplier']:.4g} · clip {s['max_grad_norm']:g} · q = {s['sample_rate']:.4g} · "
            f"{s['steps']} steps · scope {s['scope']}{stop}"
            + (f" · caveat: {'; '.join(self.caveats)}" if self.caveats else "")
        }

    # ------------------------------------------------------------------ checkpoints (JSON only)
    def state_dict(self) -> dict[str, Any]:
        assert self.generator is not None
        return {
            "accountant": self.spec.accountant,
            "history": [list(h) for h in self.accountant.history],
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "seed": self.seed,
            "generator": base64.b64encode(self.generator.get_state().numpy().tobytes()).decode("ascii"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.generator is not None
        if state.get("accountant") != self.spec.accountant or state.get("sample_rate") != self.sample_rate:
            raise ModelyardError("checkpoint: its privacy accounting does not match this run's train.privacy")
        self.accountant.history = [tuple(h) for h in state["history"]]
        self.noise_multiplier = self.optimizer.noise_multiplier = float(state["noise_multiplier"])
        self.seed = int(state["seed"])
        raw = np.frombuffer(base64.b64decode(state["generator"]), dtype=np.uint8).copy()
        self.generator.set_state(torch.from_numpy(raw))
