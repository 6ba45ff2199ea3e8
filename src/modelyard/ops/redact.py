"""``modelyard redact``: personal data in one column of a CSV/TSV/JSONL/Parquet/Excel file, replaced.

The file is read with the data stage's reader (encodings detected, one-line errors naming the file), the column's
texts go through :mod:`modelyard.privacy`, and the same format is written back with every other column and the
row order unchanged — atomically (a temporary file, then ``os.replace``), so an interrupted run leaves no half
file. A JSON summary (``<output>.summary.json``) counts the entities per type and the rows touched; it never
holds the salt or any found value.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from modelyard._internal.cli_errors import err_console, friendly_errors
from modelyard._internal.io import write_json
from modelyard._internal.storage import make_dir, storage_errors
from modelyard.data.sources import EXT_FORMAT, load_table, suggest_column
from modelyard.errors import DataError, ModelyardError
from modelyard.privacy import LANGS, MODES, get_engine, redact_texts


def _salt(mode: str, salt_env: str | None) -> str | None:
    if salt_env is None:
        if mode == "hash":
            raise ModelyardError(
                "--mode hash needs a secret salt: put it in an environment variable and pass its name with "
                "--salt-env VAR (without one, a phone number's token can be found by hashing every number)"
            )
        return None
    value = os.environ.get(salt_env, "")
    if not value:
        raise ModelyardError(f"--salt-env {salt_env}: the environment variable {salt_env} is not set or empty")
    return value


def _read(path: Path, encoding: str) -> tuple[pd.DataFrame, str, str | None]:
    try:
        table = load_table(path, "auto", encoding)
    except DataError as err:  # the data stage names its own settings; on this command they are options
        raise DataError(
            str(err).replace("data.encoding", "--encoding").replace("data.format", "the extension")
        ) from None
    if table.compression is not None or table.format == "text-folder":
        raise DataError(f"{path}: redact reads a plain .csv/.tsv/.jsonl/.parquet/.xlsx file; extract it first")
    return table.frame, table.format, table.encoding


def _jsonl(frame: pd.DataFrame) -> str:
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v

    rows = ({k: clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records"))
    return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)


def write_same_format(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write ``frame`` as ``fmt`` via a temporary file in the same folder, fsync and ``os.replace``."""
    make_dir(path.parent, "--output", "the folder of --output")
    with storage_errors(str(path), path, "--output"):
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            if fmt in ("csv", "tsv"):
                frame.to_csv(tmp, index=False, sep="," if fmt == "csv" else "\t")
            elif fmt == "jsonl":
                tmp.write_text(_jsonl(frame), encoding="utf-8")
            elif fmt == "parquet":
                frame.to_parquet(tmp, index=False)
            else:
                buf = io.BytesIO()
                frame.to_excel(buf, index=False, engine="openpyxl")
                tmp.write_bytes(buf.getvalue())
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def redact_file(
    input: Path,
    output: Path,
    *,
    column: str = "text",
    lang: str = "auto",
    mode: str = "mask",
    salt: str | None = None,
    summary: Path | None = None,
    encoding: str = "auto",
) -> dict[str, Any]:
    """Redact ``column`` of ``input`` into ``output`` (same format) and write the summary; returns the summary.

    Raises:
        DataError: unreadable or empty input, a missing column (the message lists the columns), or an output
            extension of another format than the input's.
        ModelyardError: an unknown ``lang``/``mode``, or ``hash`` without a salt.
    """
    input, output = Path(input), Path(output)
    if lang not in LANGS or mode not in MODES:
        raise ModelyardError(f"--lang must be one of {', '.join(LANGS)} and --mode one of {', '.join(MODES)}")
    frame, fmt, decoded = _read(input, encoding)
    out_fmt = EXT_FORMAT.get(output.suffix.lower())
    if out_fmt != fmt:
        raise DataError(
            f"--output {output}: the input is {fmt.upper()}, so the output is written as {fmt.upper()} too; "
            f"give it a {'/'.join(k for k, v in EXT_FORMAT.items() if v == fmt)} name"
        )
    if column not in frame.columns:
        found = [str(c) for c in frame.columns]
        raise DataError(
            f"{input}: no column '{column}' (columns found: {', '.join(found)}); pass --column with the column "
            f"holding the text{suggest_column(column, found)}"
        )
    cells = frame[column].tolist()
    is_text = [isinstance(c, str) for c in cells]
    get_engine(lang)  # built once (imports Presidio, loads jieba): not part of the measured speed
    started = time.perf_counter()
    texts, found, stats = redact_texts(
        [c if t else "" for c, t in zip(cells, is_text, strict=True)], lang=lang, mode=mode, salt=salt
    )
    seconds = time.perf_counter() - started
    frame = frame.copy()
    frame[column] = [new if t else old for new, old, t in zip(texts, cells, is_text, strict=True)]
    write_same_format(frame, output, fmt)
    result: dict[str, Any] = {
        "input": str(input),
        "output": str(output),
        "format": fmt,
        "decoded_as": decoded,
        "column": column,
        "lang": lang,
        "mode": mode,
        "rows": len(frame),
        "rows_touched": stats.texts_with_pii,
        "entities": int(sum(stats.counts.values())) if stats.counts else 0,
        "counts": stats.as_dict()["counts"],
        "seconds": round(seconds, 3),
        "texts_per_second": round(len(frame) / seconds, 1) if seconds > 0 else None,
    }
    summary_path = Path(summary) if summary is not None else output.with_name(output.name + ".summary.json")
    with storage_errors(str(summary_path), summary_path, "--summary"):
        write_json(summary_path, result)
    result["summary"] = str(summary_path)
    return result


@friendly_errors
def redact_command(
    input: Annotated[Path, typer.Option("--input", "-i", help="CSV, TSV, JSONL, Parquet or .xlsx file to redact.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the redacted copy goes (same format).")],
    column: Annotated[str, typer.Option("--column", "-c", help="The column holding the text.")] = "text",
    lang: Annotated[str, typer.Option("--lang", help="Recognizers: auto (English + Chinese), en or zh.")] = "auto",
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="mask: <PHONE>, <CN_ID> …; replace: synthetic values of the same type; hash: <PHONE:3f9a1c2b> "
            "(salted HMAC-SHA256: the same value gives the same token).",
        ),
    ] = "mask",
    salt_env: Annotated[
        str | None,
        typer.Option("--salt-env", help="Environment variable holding the secret salt (required by --mode hash)."),
    ] = None,
    summary: Annotated[
        Path | None, typer.Option("--summary", help="Where the JSON summary goes (default: <output>.summary.json).")
    ] = None,
    encoding: Annotated[
        str, typer.Option("--encoding", help="Text encoding of the input; auto detects UTF-8, GB18030, UTF-16 …")
    ] = "auto",
) -> None:
    """Replace personal data (phones, IDs, cards, e-mail, IPs, names, addresses …) in one column of a file."""
    result = redact_file(
        input,
        output,
        column=column,
        lang=lang,
        mode=mode,
        salt=_salt(mode, salt_env),
        summary=summary,
        encoding=encoding,
    )
    if result["decoded_as"] not in (None, "utf-8"):
        err_console.print(f"read {input} as {result['decoded_as']} (not UTF-8); the output is written as UTF-8")
    counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items()) or "none"
    err_console.print(
        f"redacted {result['entities']} entities in {result['rows_touched']} of {result['rows']} rows ({counts}); "
        f"summary: {result['summary']}"
    )
    print(result["output"])
