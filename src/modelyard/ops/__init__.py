"""Operations on top of the registry: what is done with stored versions, keys and logged traffic.

* :mod:`modelyard.ops.retrain`: ``modelyard retrain NAME`` (learn from feedback; promote a challenger
  only if it is not worse);
* :mod:`modelyard.ops.monitor`: ``modelyard monitor NAME`` (drift of live traffic against the
  training reference, HTML dashboard);
* :mod:`modelyard.ops.cli`: the ``registry``, ``keys``, ``retrain`` and ``monitor`` typer sub-apps.

The registry (:mod:`modelyard.registry`) is storage only and never imports this package.
"""
