"""``modelyard generate RUN``: images from a trained ``vae``/``gan`` run, as PNG files plus one grid.

The output folder is written complete or not at all: files go to a hidden sibling folder that is renamed
into place at the end, so an interrupted call never leaves a half-filled folder that looks finished.
``generated.json`` records the run, seed and class of every file, so a set can be reproduced exactly.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Annotated

import typer

from modelyard._internal.cli_errors import err_console, friendly_errors
from modelyard._internal.io import write_json
from modelyard._internal.storage import storage_errors
from modelyard.errors import ModelyardError


def generate(run: Path, n: int, output: Path, *, label: str | None = None, seed: int = 0, columns: int = 8) -> Path:
    """Write ``n`` generated images (``0000-<class>.png`` …), ``grid.png`` and ``generated.json`` into ``output``.

    Raises:
        ModelyardError: the run is not a generative model, the class is unknown (or the model unconditional),
            or ``output`` exists and is not an empty folder.
    """
    from modelyard.evaluation.generative_report import grid_image, png_bytes
    from modelyard.models.loading import load

    model = load(run)
    if not hasattr(model, "generate"):
        raise ModelyardError(f"{run} is a {model.task} model, not a generative one; train a vae or gan run first")
    if n < 1:
        raise ModelyardError("--n must be at least 1")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ModelyardError(f"--output {output} already exists and is not an empty folder; choose a new folder")
    images, names = model.generate(n, label, seed=seed)
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    files = []
    with storage_errors(f"generated images in {output}", staging, "--output"):
        staging.mkdir(parents=True)
        for i, (image, name) in enumerate(zip(images, names, strict=True)):
            fname = f"{i:04d}" + (f"-{_safe(name)}" if name is not None else "") + ".png"
            (staging / fname).write_bytes(png_bytes(image))
            files.append({"file": fname, "class": name})
        (staging / "grid.png").write_bytes(png_bytes(grid_image(images, columns), 2))
        write_json(
            staging / "generated.json",
            {
                "run": str(Path(run).resolve()),
                "n": n,
                "class": label,
                "seed": seed,
                "model": model.info(),
                "files": files,
            },
        )
        if output.exists():
            output.rmdir()
        staging.rename(output)
    return output


def _safe(name: str) -> str:
    """A class name as a file-name part (letters, digits, CJK kept; everything else → ``_``)."""
    return re.sub(r"[^\w.-]+", "_", name, flags=re.UNICODE).strip("._") or "class"


@friendly_errors
def generate_command(
    run: Annotated[Path, typer.Argument(help="A finished vae or gan run directory (or its model/ folder).")],
    n: Annotated[int, typer.Option("--n", min=1, max=100_000, help="How many images.")] = 64,
    label: Annotated[
        str | None, typer.Option("--class", help="Generate this class only (conditional models); default: all in turn.")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="New folder for the PNGs and grid.png.")] = Path(
        "generated"
    ),
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same images.")] = 0,
) -> None:
    """Generate images with a trained vae/gan run: PNG files, grid.png and generated.json."""
    out = generate(run, n, output, label=label, seed=seed)
    err_console.print(f"wrote {n} images and grid.png to {out}")
    print(out)
