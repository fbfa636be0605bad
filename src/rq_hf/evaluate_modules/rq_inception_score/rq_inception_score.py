"""rq-hf Inception Score as an `evaluate` metric (10 contiguous splits).

Load offline: ``evaluate.load(rq_hf.evaluation.evaluate_module_path("rq_inception_score"))``. Computes with
:func:`rq_hf.evaluation.compute_inception_score`.
"""

import datasets
import evaluate

from rq_hf.evaluation import compute_inception_score
from rq_hf.evaluation.evaluate_inputs import IMAGE_FEATURE, images_to_tensor
from rq_hf.evaluation.modules import PAPER_CITATION

_DESCRIPTION = "Inception Score of generated images: mean and standard deviation over contiguous splits."

_CITATION = PAPER_CITATION

_INPUTS = """
Args:
    predictions: images (3, H, W), float in [0, 1].
    classifier: an nn.Module (images -> (B, C) logits); default: the standard Inception's 1008 logits.
    splits: number of contiguous parts (default 10).
    batch_size: images per forward pass (default 50).
Returns:
    {"inception_score": float, "inception_score_std": float}
"""


class RQInceptionScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": IMAGE_FEATURE}),
        )

    def _compute(self, predictions, classifier=None, splits=10, batch_size=50):
        images = images_to_tensor(predictions)
        mean, std = compute_inception_score(
            images, classifier=classifier, splits=splits, batch_size=batch_size
        )
        return {"inception_score": mean, "inception_score_std": std}
