"""rq-hf reconstruction metrics as an `evaluate` metric: rFID, PSNR, SSIM and optional LPIPS.

Load offline: ``evaluate.load(rq_hf.evaluation.evaluate_module_path("rq_reconstruction"))``. Computes with
:func:`rq_hf.evaluation.reconstruction_metrics`.
"""

import datasets
import evaluate

from rq_hf.evaluation import reconstruction_metrics
from rq_hf.evaluation.evaluate_inputs import IMAGE_FEATURE, images_to_tensor
from rq_hf.evaluation.modules import PAPER_CITATION

_DESCRIPTION = "rFID, mean PSNR, mean SSIM (and mean LPIPS) of reconstructions against their original images."

_CITATION = PAPER_CITATION

_INPUTS = """
Args:
    predictions: reconstructions (3, H, W), float in [0, 1].
    references: the original images (3, H, W), float in [0, 1], in the same order.
    feature_extractor: an nn.Module (images -> (B, F) features) for rFID; default: the standard FID Inception.
    with_lpips: also compute LPIPS (needs torchvision; default False).
    batch_size: images per forward pass (default 50).
Returns:
    {"rfid": float, "psnr": float, "ssim": float} (and "lpips")
"""


class RQReconstruction(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": IMAGE_FEATURE, "references": IMAGE_FEATURE}),
        )

    def _compute(self, predictions, references, feature_extractor=None, with_lpips=False, batch_size=50):
        return reconstruction_metrics(
            images_to_tensor(references),
            images_to_tensor(predictions),
            feature_extractor=feature_extractor,
            with_lpips=with_lpips,
            batch_size=batch_size,
        )
