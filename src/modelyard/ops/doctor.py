"""``modelyard doctor``: what is installed, what optional features need, the device, whether bundled models load.

:func:`diagnose` returns a JSON-able report; :func:`render` prints it as tables. The report's ``ok`` is false (and
``problems`` says what is missing, with the command that fixes it) when something ``modelyard quickstart`` needs is
missing or broken: torch, a core dependency, the bundled MiniLM encoder or the Rotten Tomatoes corpus. The bundled
packages are located and read, never imported.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.metadata
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelyard._internal.bundled import BUNDLED_PACKAGES, FETCH_BUNDLED, BundledPackage
from modelyard._internal.packages import FEATURES, install_command, module_installed, package_dir
from modelyard.ops.fetch_bundled import installed_version

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*([^;]*?)\s*(?:;\s*(.*))?$")
_MIN_GGUF_BYTES = 10_000_000  # the bundled GGUF models are ~90 MB and more; a stub or a truncated file is not


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _modelyard() -> dict[str, Any]:
    import modelyard

    location = Path(modelyard.__file__).resolve().parent
    kind = "not installed (a source tree on the path)"
    try:
        dist = importlib.metadata.distribution("modelyard")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("dir_info", {}).get("editable"):
            kind = f"editable install of {direct.get('url', '?')}"
        elif Path(str(dist.locate_file("modelyard"))).resolve() == location:
            kind = "installed package"
        else:
            kind = f"a source tree on the path, in front of the installed {dist.version}"
    return {"version": modelyard.__version__, "location": str(location), "install": kind}


def _core_dependencies() -> dict[str, Any]:
    """Every non-extra requirement of the installed modelyard distribution: present or the command to add it."""
    try:
        requires = importlib.metadata.requires("modelyard") or []
    except importlib.metadata.PackageNotFoundError:
        return {"checked": 0, "missing": [], "note": "modelyard is not installed as a package (a source tree)"}
    missing = []
    checked = 0
    for line in requires:
        m = _REQUIREMENT.match(line)
        if m is None or (m.group(4) and "extra" in m.group(4)):
            continue
        checked += 1
        if _version(m.group(1)) is None:
            missing.append({"name": m.group(1), "install": f'pip install "{m.group(1)}{m.group(3)}"'})
    return {"checked": checked, "missing": missing}


def _torch() -> dict[str, Any]:
    try:
        import torch
    except ImportError as err:
        return {"error": f"{type(err).__name__}: {err}", "install": install_command("torch")}
    from modelyard._internal.runtime import pick_device

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    import os

    return {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "mps": mps,
        "device": str(pick_device("auto")),
    }


def _features() -> list[dict[str, Any]]:
    rows = []
    for feature in FEATURES:
        installed = all(module_installed(m) for m in feature.modules)
        rows.append(
            {
                "name": feature.name,
                "needs": list(feature.distributions),
                "installed": installed,
                "versions": {d: _version(d) for d in feature.distributions},
                "extra": feature.extra,
                "install": None if installed else feature.install,
            }
        )
    return rows


def _read_start(path: Path) -> int:
    """Read (and decompress) the first 64 KiB of a data file; the number of bytes read."""
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    with opener(path, "rb") as f:
        return len(f.read(65536))


def _load_encoder(model_dir: Path) -> str:
    """Load tokenizer + model from the folder offline and run one forward pass."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    with torch.inference_mode():
        out = model(**tokenizer(["modelyard doctor checks the bundled encoder."], return_tensors="pt"))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    hidden = tuple(out.last_hidden_state.shape)
    return f"loads: forward pass ok (output {hidden}, {params:.1f}M params, {time.perf_counter() - start:.1f} s)"


def _load_check(pkg: BundledPackage, root: Path, load_models: bool) -> str:
    """Whether what the package carries loads; raises on a failure."""
    if pkg.name == "minilm-l6":
        model_dir = root / Path(pkg.files[0]).parent
        return _load_encoder(model_dir) if load_models else "found (load not checked)"
    if pkg.name == "gemma3-270m":
        from modelyard.llm.gemma import GEMMA_FILE, gguf_root

        assembled = gguf_root() / GEMMA_FILE
        if assembled.is_file():
            return f"GGUF assembled at {assembled}"
        return "installed; its GGUF is assembled and converted on first use (about a minute)"
    details = []
    for rel in pkg.files:
        path = root / rel
        size = path.stat().st_size
        if path.suffix == ".gguf":
            with open(path, "rb") as f:
                if f.read(4) != b"GGUF":
                    raise ValueError(f"{path} is not a GGUF file")
            if size < _MIN_GGUF_BYTES:
                raise ValueError(f"{path} is only {size} bytes (truncated?)")
            details.append(f"GGUF {size / 1e6:.0f} MB")
        else:
            _read_start(path)
            details.append(f"{path.name} readable ({size / 1e6:.1f} MB)")
    return "; ".join(details)


def _bundled(load_models: bool) -> list[dict[str, Any]]:
    rows = []
    for pkg in BUNDLED_PACKAGES.values():
        version = installed_version(pkg)
        root = package_dir(pkg.module)
        row: dict[str, Any] = {
            "name": pkg.name,
            "what": pkg.what,
            "distribution": pkg.distribution,
            "pinned": pkg.version,
            "installed_version": version,
            "installed": root is not None,
            "loads": False,
            "detail": "",
            "required": pkg.quickstart,
            "install": pkg.install,
        }
        if root is None:
            row["detail"] = "not installed"
        else:
            missing = [rel for rel in pkg.files if not (root / rel).is_file()]
            try:
                if missing:
                    raise FileNotFoundError(f"missing from the package: {', '.join(missing)}")
                row["detail"] = _load_check(pkg, root, load_models)
                row["loads"] = True
                row["install"] = None
            except Exception as err:  # noqa: BLE001 - any failure to read or load is what doctor reports
                first = (str(err).strip().splitlines() or [""])[0][:200]
                row["detail"] = f"does not load: {type(err).__name__}: {first}"
                row["install"] = f"{pkg.install} --force-reinstall"
            if version is not None and version != pkg.version:
                row["detail"] += f" (version {version}; modelyard is verified with {pkg.version})"
                row["install"] = row["install"] or pkg.install
        rows.append(row)
    from modelyard.data.images import FASHION_MNIST_APT, FASHION_MNIST_DIR

    present = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
    rows.append(
        {
            "name": "fashion-mnist",
            "what": "Fashion-MNIST, 70k images (data.path: bundled:fashion-mnist); a Debian package",
            "distribution": "dataset-fashion-mnist (apt)",
            "pinned": None,
            "installed_version": None,
            "installed": present,
            "loads": present,
            "detail": f"files in {FASHION_MNIST_DIR}" if present else "not installed",
            "required": False,
            "install": None if present else FASHION_MNIST_APT,
        }
    )
    return rows


def diagnose(*, load_models: bool = True) -> dict[str, Any]:
    """The doctor's report: versions, device, optional features, bundled packages, and what the quickstart lacks."""
    report: dict[str, Any] = {
        "modelyard": _modelyard(),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "torch": _torch(),
        "core_dependencies": _core_dependencies(),
        "features": _features(),
        "bundled": _bundled(load_models),
    }
    problems = []
    if "error" in report["torch"]:
        problems.append(f"torch does not import ({report['torch']['error']}): {report['torch']['install']}")
    for dep in report["core_dependencies"]["missing"]:
        problems.append(f"the dependency {dep['name']} is missing: {dep['install']}")
    broken = [row for row in report["bundled"] if row["required"] and not row["loads"]]
    for row in broken:
        problems.append(f"bundled {row['name']} ({row['distribution']}): {row['detail']}")
    if broken:
        problems.append(
            f"install the bundled packages: {FETCH_BUNDLED}  (or one by one: "
            + "; ".join(row["install"] for row in broken)
            + ")"
        )
    report["problems"] = problems
    report["ok"] = not problems
    return report


def _status(ok: bool, optional: bool = False) -> str:
    return "[green]ok[/]" if ok else ("[yellow]no[/]" if optional else "[bold red]MISSING[/]")


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as tables (every value escaped: `modelyard[postgres]` is not rich markup)."""
    e = escape
    my, py, tch = report["modelyard"], report["python"], report["torch"]
    summary = Table(title="modelyard doctor", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    summary.add_row("modelyard", e(f"{my['version']} · {my['install']} · {my['location']}"))
    summary.add_row("Python", e(f"{py['version']} · {py['executable']}"))
    summary.add_row("platform", e(report["platform"]))
    if "error" in tch:
        summary.add_row("torch", f"[bold red]{e(tch['error'])}[/] → {e(tch['install'])}")
    else:
        cuda = ", ".join(tch["cuda_devices"]) if tch["cuda"] else "not available"
        summary.add_row("torch", e(f"{tch['version']} (CUDA build: {tch['cuda_build'] or 'none'})"))
        summary.add_row(
            "device",
            f"{tch['device']} · {tch['threads']} CPU threads ({tch['cpu_count']} cores) · CUDA: {e(cuda)} · "
            f"MPS: {'available' if tch['mps'] else 'not available'}",
        )
    core = report["core_dependencies"]
    if core.get("note"):
        summary.add_row("dependencies", e(core["note"]))
    else:
        missing = e(", ".join(d["install"] for d in core["missing"]))
        summary.add_row(
            "dependencies",
            f"{core['checked'] - len(core['missing'])}/{core['checked']} installed"
            + (f" · [bold red]missing[/]: {missing}" if missing else ""),
        )
    console.print(summary)

    features = Table(title="optional features", title_justify="left")
    for col in ("", "feature", "needs", "installed", "install with"):
        features.add_column(col, overflow="fold")
    for row in report["features"]:
        versions = ", ".join(f"{d} {v}" for d, v in row["versions"].items() if v) or "-"
        features.add_row(
            _status(row["installed"], optional=True),
            e(row["name"]),
            e(" ".join(row["needs"])),
            e(versions),
            e(row["install"] or ""),
        )
    console.print(features)

    bundled = Table(title="bundled weights and data", title_justify="left")
    for col in ("", "name", "package", "check", "install with"):
        bundled.add_column(col, overflow="fold")
    for row in report["bundled"]:
        version = f" {row['installed_version']}" if row["installed_version"] else ""
        bundled.add_row(
            _status(row["loads"], optional=not row["required"]),
            e(row["name"] + (" (quickstart)" if row["required"] else "")),
            e(row["distribution"] + version),
            e(row["detail"]),
            e(row["install"] or ""),
        )
    console.print(bundled)
    for problem in report["problems"]:
        console.print(f"[bold red]needed for the quickstart:[/] {e(problem)}", highlight=False, soft_wrap=True)
