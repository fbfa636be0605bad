"""rq-hf FID as an `evaluate` metric: FID (or rFID) of images against reference images or `.npz` statistics.

Load offline: ``evaluate.load(rq_hf.evaluation.evaluate_module_path("rq_fid"))`` to compare with reference
images (``references``), or with ``config_name="statistics"`` to compare with an `.npz` file
(``compute(..., reference_statistics=PATH)``). Computes with :func:`rq_hf.evaluation.compute_fid`.
"""

import datasets
import evaluate

from rq_hf.evaluation import compute_fid
from rq_hf.evaluation.evaluate_inputs import IMAGE_FEATURE, images_to_tensor
from rq_hf.evaluation.modules import PAPER_CITATION

_DESCRIPTION = "Fréchet Inception Distance of images against reference images or precomputed statistics."

_CITATION = PAPER_CITATION

_INPUTS = """
Args:
    predictions: images (3, H, W), float in [0, 1] (generated samples, or reconstructions for rFID).
    references: images (3, H, W) in [0, 1] (dataset images, or the originals for rFID); default config.
    reference_statistics: the path of an `.npz` with `mu` and `sigma`; config "statistics" (no references).
    feature_extractor: an nn.Module (images -> (B, F) features); default: the standard FID Inception.
    batch_size: images per forward pass (default 50).
Returns:
    {"fid": float}
"""


class RQFid(evaluate.Metric):
    def _info(self):
        if self.config_name not in ("default", "statistics"):
            raise ValueError(f"config_name: expected 'default' or 'statistics', got {self.config_name!r}")
        features = {"predictions": IMAGE_FEATURE}
        if self.config_name == "default":
            features["references"] = IMAGE_FEATURE
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(features),
        )

    def _compute(
        self, predictions, references=None, reference_statistics=None, feature_extractor=None, batch_size=50
    ):
        if references is None:
            if reference_statistics is None:
                raise ValueError("reference_statistics: expected the path of an .npz file, got None")
            reference = reference_statistics
        else:
            reference = images_to_tensor(references)
        images = images_to_tensor(predictions)
        fid = compute_fid(images, reference, feature_extractor=feature_extractor, batch_size=batch_size)
        return {"fid": fid}
