"""``xaisdk evaluate``: the papers' metrics over a grid of attribution methods x baselines, run
through an :class:`~xaisdk.Explainer` (torch model or exported bundle), written as ``metrics.json``,
``report.md`` and PNG figures. The metrics themselves are :mod:`xaisdk.metrics`.

>>> from xaisdk.evaluation import EvaluationConfig
>>> EvaluationConfig().methods
('ig', 'eg', 'deeplift', 'occlusion')
"""

from xaisdk.evaluation.evaluate import EvaluationConfig, EvaluationResult, evaluate
from xaisdk.evaluation.report import write_report

__all__ = ["EvaluationConfig", "EvaluationResult", "evaluate", "write_report"]
