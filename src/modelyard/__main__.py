"""``python -m modelyard …``: the same command line as the ``modelyard`` script."""

from modelyard.cli import main

main()
