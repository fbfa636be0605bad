"""Paths of the `evaluate` module scripts shipped in the package: ``rq_hf/evaluate_modules/<name>/<name>.py``.

Each script defines one ``evaluate.Metric`` that stores the batches given to ``add_batch`` and computes
through the functions of :mod:`rq_hf.evaluation`. Load them offline, no Hub access::

    import evaluate
    from rq_hf.evaluation import evaluate_module_path

    fid = evaluate.load(evaluate_module_path("rq_fid"))
"""

from __future__ import annotations

from pathlib import Path

PAPER_CITATION = """\
@inproceedings{lee2022autoregressive,
  title={Autoregressive Image Generation using Residual Quantization},
  author={Lee, Doyup and Kim, Chiheon and Kim, Saehoon and Cho, Minsu and Han, Wook-Shin},
  booktitle={CVPR},
  year={2022}
}
"""
"""BibTeX of the paper, the citation of every shipped module."""

EVALUATE_MODULES = ("rq_fid", "rq_inception_score", "rq_reconstruction", "rq_codebook_usage", "rq_clip_score")
"""Names of the shipped modules."""

_MODULES_DIR = Path(__file__).resolve().parent.parent / "evaluate_modules"


def evaluate_module_path(name: str) -> str:
    """The file path of a shipped `evaluate` module script, for ``evaluate.load(path)``.

    Args:
        name: one of :data:`EVALUATE_MODULES`.
    """
    if name not in EVALUATE_MODULES:
        raise ValueError(f"name: expected one of {EVALUATE_MODULES}, got {name!r}")
    path = _MODULES_DIR / name / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"evaluate_module_path: the package is missing {path} (reinstall rq-hf)")
    return str(path)
