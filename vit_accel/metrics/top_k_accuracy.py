"""Top-1 and top-5 accuracy as an `evaluate` metric script.

Shipped inside vit_accel and loaded by path (`evaluate.load(<this file>)`), because `evaluate.load("accuracy")`
fetches its script from the Hub and cannot work offline.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-k accuracy: a prediction counts when the reference is among the k highest-ranked classes."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int]]`): for each example, class ids ranked best first (at least 5 for top-5).
    references (`list[int]`): the true class of each example.
Returns:
    top1 (`float`), top5 (`float`): fractions in [0, 1]. With fewer than 5 ranked classes, top5 uses all of them.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        ranked = np.asarray(predictions, dtype=np.int64).reshape(len(references), -1)
        hits = ranked == np.asarray(references, dtype=np.int64)[:, None]
        return {"top1": float(hits[:, 0].mean()), "top5": float(hits[:, :5].any(axis=1).mean())}
