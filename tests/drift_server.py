"""``python -m tests.drift_server STORE PORT``: the production server for ``demo@production`` as its own process.

Run with the real uvicorn configuration (:func:`modelyard.serving.server.run_server`) and a drift monitor that
burns a core for a minute (``tests.job_targets.burning_monitor``), so a test can measure the CPU time of the
server and its children from outside.
"""

from __future__ import annotations

import sys

from modelyard.config import ServeConfig
from modelyard.registry import open_registry
from modelyard.serving.production import create_production_app
from modelyard.serving.server import run_server
from tests.job_targets import burning_monitor


def main(store: str, port: str) -> None:
    reg = open_registry(store)
    cfg = ServeConfig(max_wait_ms=2.0)
    app = create_production_app(reg, "demo", "production", cfg, poll_s=0, drift_monitor=burning_monitor)
    run_server(app, cfg, "127.0.0.1", int(port))


if __name__ == "__main__":
    main(*sys.argv[1:])
