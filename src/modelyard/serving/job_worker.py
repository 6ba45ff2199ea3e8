"""The child process of an admin job: ``python -m modelyard.serving.job_worker MODULE:FUNCTION KWARGS_JSON``.

It opens the registry named in the keyword arguments (``store``; the database URL comes from the
``MODELYARD_DB`` environment variable, never the command line, so a password does not show in ``ps``),
calls ``FUNCTION(registry, **rest)`` and prints its result as one JSON line. The function is named by
the server (e.g. :func:`modelyard.ops.monitor.monitor`); nothing is unpickled.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from modelyard.registry import open_registry


def main(argv: list[str]) -> int:
    target, raw = argv
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    kwargs = json.loads(raw)
    registry = open_registry(Path(kwargs.pop("store")), os.environ.get("MODELYARD_DB") or None)
    try:
        result = fn(registry, **kwargs)
    finally:
        registry.close()
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as err:  # noqa: BLE001 - one line for the job's error, not a traceback in the server log
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
