"""rq-hf per-depth codebook usage and perplexity as an `evaluate` metric.

Load offline: ``evaluate.load(rq_hf.evaluation.evaluate_module_path("rq_codebook_usage"))``. Computes with
:func:`rq_hf.evaluation.codebook_usage` and :func:`rq_hf.evaluation.codebook_perplexity`.
"""

import datasets
import evaluate
import torch

from rq_hf.evaluation import codebook_perplexity, codebook_usage
from rq_hf.evaluation.modules import PAPER_CITATION

_DESCRIPTION = "Per-depth codebook usage counts, number of used codes and perplexity of RQ-VAE codes."

_CITATION = PAPER_CITATION

_INPUTS = """
Args:
    predictions: codes (h, w, D) of one image, integers, depth last.
    codebook_sizes: K (shared by all depths) or a list of D sizes.
Returns:
    {"perplexity": [float] * D, "used_codes": [int] * D, "usage": [[int] * K_d] * D}
"""

_CODES = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("int64"))))


class RQCodebookUsage(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": _CODES}),
        )

    def _compute(self, predictions, codebook_sizes):
        usage = codebook_usage(torch.tensor(predictions, dtype=torch.int64), codebook_sizes)
        return {
            "perplexity": codebook_perplexity(usage),
            "used_codes": [int((counts > 0).sum()) for counts in usage],
            "usage": [counts.tolist() for counts in usage],
        }
