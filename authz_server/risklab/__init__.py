"""Offline risk tooling: training (training.py, graph.py), traffic simulation and evaluation, `authz-server model`.

Nothing on the request path imports this package; authz_server/risk/ serves what it builds.
"""

DEFAULT_FPR_BUDGET = 0.001
"""Share of benign calls a trained model may alarm on (annotate); the deny band is held ten times rarer."""
