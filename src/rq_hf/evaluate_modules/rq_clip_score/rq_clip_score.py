"""rq-hf CLIP score as an `evaluate` metric: mean cosine similarity of CLIP image and caption embeddings.

Load offline: ``evaluate.load(rq_hf.evaluation.evaluate_module_path("rq_clip_score"))``. Computes with
:func:`rq_hf.evaluation.compute_clip_score`.
"""

import datasets
import evaluate

from rq_hf.evaluation import compute_clip_score
from rq_hf.evaluation.evaluate_inputs import IMAGE_FEATURE, images_to_tensor
from rq_hf.evaluation.modules import PAPER_CITATION

_DESCRIPTION = (
    "CLIP score of text-to-image samples: mean cosine similarity of CLIP image and text embeddings."
)

_CITATION = PAPER_CITATION

_INPUTS = """
Args:
    predictions: images (3, H, W), float in [0, 1].
    references: the caption of each image.
    model: a transformers CLIPModel (the paper: openai/clip-vit-base-patch32).
    processor: the matching CLIPProcessor.
    batch_size: pairs per forward pass (default 50).
Returns:
    {"clip_score": float}
"""


class RQClipScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": IMAGE_FEATURE, "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, model, processor, batch_size=50):
        images = images_to_tensor(predictions)
        return {"clip_score": compute_clip_score(images, references, model, processor, batch_size=batch_size)}
