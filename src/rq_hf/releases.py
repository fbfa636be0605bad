"""The original RQ-VAE / RQ-Transformer releases (Lee et al., CVPR 2022): facts for conversion and cards.

One frozen :class:`Release` per checkpoint tarball of kakaobrain/rq-vae-transformer. Sources:

- architecture and sampling defaults: the released ``configs/*.yaml`` of the original repository;
- transformer parameter counts and FIDs: the original README (the FIDs are those of the paper);
- Inception Scores and the CC-3M CLIP score: the paper's Tables 2 and 3, as quoted by later comparison
  tables. A number that could not be traced is left out rather than guessed (the IS of the 1.4B model
  with the default RQ-VAE is absent for that reason);
- RQ-VAE parameter counts: computed by rq-hf from the released architecture (encoder, decoder,
  ``quant_conv``, ``post_quant_conv`` and the shared codebook without its unused padding row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Conditioning = Literal["unconditional", "class", "text"]

PAPER_SOURCE = "Lee et al., CVPR 2022 (arXiv 2203.01941)"
PAPER_URL = "https://arxiv.org/abs/2203.01941"
ORIGINAL_REPO_URL = "https://github.com/kakaobrain/rq-vae-transformer"

# Pipeline tag per conditioning. The Hub has no class-conditional image-generation task; the nearest one
# is unconditional-image-generation (no text or image input, the class id only selects what to draw).
PIPELINE_TAGS: dict[str, str] = {
    "unconditional": "unconditional-image-generation",
    "class": "unconditional-image-generation",
    "text": "text-to-image",
}

_RQVAE_PARAMS_FFHQ = 100_731_779  # attention at 16x16, K = 2048
_RQVAE_PARAMS_K16384 = 104_401_795  # attention at 8x8, K = 16384


@dataclass(frozen=True)
class SamplingDefaults:
    """Sampling settings a release was evaluated with: one top-k / top-p for every depth, one temperature."""

    top_k: int | None
    top_p: float | None
    temperature: float = 1.0


@dataclass(frozen=True)
class Metric:
    """One evaluation number, quoted from its source (never re-measured unless the source says so).

    ``metric_type`` is the machine id written to the model-index (``fid``, ``inception_score``,
    ``clip_score``), ``name`` the label shown to people, ``dataset_type`` a Hub dataset id where one exists
    (otherwise a short slug), ``config`` how it was measured (e.g. ``"50K samples"``).
    """

    name: str
    metric_type: str
    value: float
    dataset_name: str
    dataset_type: str
    dataset_split: str | None = None
    config: str | None = None
    source_name: str = "measured with rq-hf"
    source_url: str | None = None


@dataclass(frozen=True)
class Release:
    """One original release (a stage-1 RQ-VAE + stage-2 RQ-Transformer tarball).

    ``datasets`` holds Hub dataset ids only where the dataset is on the Hub; ``dataset_description``
    names the training data in prose. ``transformer_params`` is the count the authors state;
    ``rqvae_params`` is computed from the architecture. ``rejection_fid`` is the paper's FID with 5%
    rejection sampling by a ResNet-101 classifier (not part of rq-hf or of the original code release).
    All releases use 256x256 images and 8x8x4 codes.
    """

    name: str
    title: str
    conditioning: Conditioning
    dataset_description: str
    datasets: tuple[str, ...]
    transformer_params: str
    rqvae_params: int
    embed_dim: int
    spatial_layers: int
    depth_layers: int
    num_heads: int
    codebook_size: int
    cond_vocab_size: int
    cond_length: int
    rqvae_attention_resolution: int
    sampling: SamplingDefaults
    metrics: tuple[Metric, ...]
    original_url: str
    rejection_fid: float | None = None
    notes: tuple[str, ...] = ()
    image_size: int = 256
    code_shape: tuple[int, int, int] = (8, 8, 4)
    input_embed_dim: int = 256

    @property
    def pipeline_tag(self) -> str:
        """The Hub pipeline tag for this release's conditioning (see :data:`PIPELINE_TAGS`)."""
        return PIPELINE_TAGS[self.conditioning]


def _paper(
    name: str, metric_type: str, value: float, dataset_name: str, dataset_type: str, split: str, config: str
) -> Metric:
    """A number quoted from the paper."""
    return Metric(
        name, metric_type, value, dataset_name, dataset_type, split, config, PAPER_SOURCE, PAPER_URL
    )


def _fid(value: float, dataset_name: str, dataset_type: str) -> Metric:
    """Paper FID of 50K samples against the training set (the original evaluation protocol)."""
    return _paper("FID", "fid", value, dataset_name, dataset_type, "train", "50K samples")


def _tarball(path: str) -> str:
    return f"https://twg.kakaocdn.net/brainrepo/models/RQVAE/{path}"


_IMAGENET = "ILSVRC/imagenet-1k"
_CC3M = "google-research-datasets/conceptual_captions"


def _lsun(
    name: str,
    scene: str,
    split: str,
    params: str,
    width: int,
    layers: int,
    heads: int,
    fid: float,
    tarball: str,
) -> Release:
    """An unconditional LSUN release (``split``: the original LSUN folder; ``width``/``heads``: E and heads of
    both transformers, ``layers``: spatial layers, the depth transformer has 4)."""
    return Release(
        name=name,
        title=f"RQ-Transformer {params}, LSUN {scene} 256x256 (unconditional)",
        conditioning="unconditional",
        dataset_description=f"LSUN {scene} ({split} training set) at 256x256",
        datasets=(),
        transformer_params=params,
        rqvae_params=_RQVAE_PARAMS_K16384,
        embed_dim=width,
        spatial_layers=layers,
        depth_layers=4,
        num_heads=heads,
        codebook_size=16384,
        cond_vocab_size=1,
        cond_length=1,
        rqvae_attention_resolution=8,
        sampling=SamplingDefaults(top_k=250, top_p=1.0),
        metrics=(_fid(fid, f"LSUN {scene} 256x256", name),),
        original_url=_tarball(tarball),
        notes=(f"The RQ-VAE is the ImageNet RQ-VAE fine-tuned on LSUN {scene} for one epoch.",),
    )


def _imagenet(
    name: str,
    title: str,
    params: str,
    width: int,
    layers: tuple[int, int],
    heads: int,
    fid: float,
    inception_score: float | None,
    tarball: str,
    rejection_fid: float | None = None,
    notes: tuple[str, ...] = (),
) -> Release:
    """A class-conditional ImageNet release (1000 classes, top-k 16384 / top-p 0.92); ``layers`` is
    (spatial, depth), ``width``/``heads`` are E and the heads of both transformers."""
    metrics = [_fid(fid, "ImageNet 256x256", _IMAGENET)]
    if inception_score is not None:
        metrics.append(
            _paper(
                "Inception Score",
                "inception_score",
                inception_score,
                "ImageNet 256x256",
                _IMAGENET,
                "train",
                "50K samples",
            )
        )
    return Release(
        name=name,
        title=f"{title}, class-conditional ImageNet 256x256",
        conditioning="class",
        dataset_description="ImageNet-1k (ILSVRC 2012) training set, 1000 classes, at 256x256",
        datasets=(_IMAGENET,),
        transformer_params=params,
        rqvae_params=_RQVAE_PARAMS_K16384,
        embed_dim=width,
        spatial_layers=layers[0],
        depth_layers=layers[1],
        num_heads=heads,
        codebook_size=16384,
        cond_vocab_size=1000,
        cond_length=1,
        rqvae_attention_resolution=8,
        sampling=SamplingDefaults(top_k=16384, top_p=0.92),
        metrics=tuple(metrics),
        original_url=_tarball(tarball),
        rejection_fid=rejection_fid,
        notes=notes,
    )


_FIFTY_EPOCHS = "The RQ-VAE of this release was trained for 50 epochs instead of 10."

RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release(
            name="ffhq",
            title="RQ-Transformer 355M, FFHQ 256x256 (unconditional)",
            conditioning="unconditional",
            dataset_description="FFHQ (Flickr-Faces-HQ), the 60k-image training split, at 256x256",
            datasets=(),
            transformer_params="355M",
            rqvae_params=_RQVAE_PARAMS_FFHQ,
            embed_dim=1024,
            spatial_layers=24,
            depth_layers=4,
            num_heads=16,
            codebook_size=2048,
            cond_vocab_size=1,
            cond_length=1,
            rqvae_attention_resolution=16,
            sampling=SamplingDefaults(top_k=250, top_p=1.0),
            metrics=(_fid(10.38, "FFHQ 256x256", "ffhq"),),
            original_url=_tarball("d47570aeff6ba300735606a806f54663/ffhq.tar.gz"),
        ),
        _lsun(
            "lsun-church",
            "Church",
            "church_outdoor",
            "370M",
            1024,
            24,
            16,
            7.45,
            "deeb3e0ac6e09923754e3e594ede7b01/church.tar.gz",
        ),
        _lsun(
            "lsun-cat",
            "Cat",
            "cat",
            "612M",
            1280,
            26,
            20,
            8.64,
            "92b4e6a9ace09c9ab8ff9d3b3e688367/cat.tar.gz",
        ),
        _lsun(
            "lsun-bedroom",
            "Bedroom",
            "bedroom",
            "612M",
            1280,
            26,
            20,
            3.04,
            "06b72c164cd2fe64fc8ebd6b42b0040f/bedroom.tar.gz",
        ),
        _imagenet(
            "imagenet-480m",
            "RQ-Transformer 480M",
            "480M",
            1536,
            (12, 4),
            24,
            15.72,
            86.8,
            "7518a004fe39120fcffbba76005dc6c3/imagenet_480M.tar.gz",
        ),
        _imagenet(
            "imagenet-821m",
            "RQ-Transformer 821M",
            "821M",
            1536,
            (24, 4),
            24,
            13.11,
            104.3,
            "dcd39292319104da5577dec3956bfdcc/imagenet_821M.tar.gz",
        ),
        _imagenet(
            "imagenet-1.4b",
            "RQ-Transformer 1.4B",
            "1.4B",
            1536,
            (42, 6),
            24,
            11.56,
            None,
            "f5cf4e5f3f0b5088d52cbb5e85c1077f/imagenet_1.4B.tar.gz",
            4.45,
        ),
        _imagenet(
            "imagenet-1.4b-rqvae-50e",
            "RQ-Transformer 1.4B with the 50-epoch RQ-VAE",
            "1.4B",
            1536,
            (42, 6),
            24,
            8.71,
            119.0,
            "6714b47bb9382076923590eff08b1ee5/imagenet_1.4B_rqvae_50e.tar.gz",
            3.89,
            (_FIFTY_EPOCHS,),
        ),
        _imagenet(
            "imagenet-3.8b",
            "RQ-Transformer 3.8B",
            "3.8B",
            2560,
            (42, 6),
            40,
            7.55,
            134.0,
            "e1ee2fef2928f7fd31f53a8348f08b88/imagenet_3.8B_rqvae_50e.tar.gz",
            3.80,
            (_FIFTY_EPOCHS,),
        ),
        Release(
            name="cc3m-654m",
            title="RQ-Transformer 654M, text-to-image on CC-3M 256x256",
            conditioning="text",
            dataset_description="Conceptual Captions (CC-3M) image-text pairs at 256x256",
            datasets=(_CC3M,),
            transformer_params="654M",
            rqvae_params=_RQVAE_PARAMS_K16384,
            embed_dim=1280,
            spatial_layers=26,
            depth_layers=4,
            num_heads=20,
            codebook_size=16384,
            cond_vocab_size=16384,
            cond_length=32,
            rqvae_attention_resolution=8,
            sampling=SamplingDefaults(top_k=16384, top_p=0.7),
            metrics=(
                _paper("FID", "fid", 12.33, "CC-3M 256x256", _CC3M, "validation", "validation captions"),
                _paper(
                    "CLIP score",
                    "clip_score",
                    0.26,
                    "CC-3M 256x256",
                    _CC3M,
                    "validation",
                    "validation captions",
                ),
            ),
            original_url=_tarball("dcd95e8f08408e113aab6451fae895f5/cc3m.tar.gz"),
        ),
        Release(
            name="cc3m-cc12m-yfcc-3.9b",
            title="RQ-Transformer 3.9B, text-to-image on CC-3M + CC-12M + YFCC subset 256x256",
            conditioning="text",
            dataset_description="about 30 million image-text pairs from CC-3M, CC-12M and the YFCC100M subset "
            "used by OpenAI's CLIP, at 256x256",
            datasets=(_CC3M, "google-research-datasets/conceptual_12m"),
            transformer_params="~3.9B",
            rqvae_params=_RQVAE_PARAMS_K16384,
            embed_dim=2560,
            spatial_layers=42,
            depth_layers=6,
            num_heads=40,
            codebook_size=16384,
            cond_vocab_size=16384,
            cond_length=32,
            rqvae_attention_resolution=8,
            sampling=SamplingDefaults(top_k=1024, top_p=0.95),
            metrics=(
                Metric(
                    "FID",
                    "fid",
                    16.9,
                    "MS-COCO 2014 (zero-shot)",
                    "coco-2014",
                    "validation",
                    "30K captions of val2014 (DALL-Eval protocol)",
                    "original repository README (not in the paper)",
                    ORIGINAL_REPO_URL,
                ),
            ),
            original_url=_tarball("3a8429cd7ec0e0f2b66fca94804c79d5/cc3m_cc12m_yfcc.tar.gz"),
            notes=(
                "Trained after the paper's submission: the paper reports no number for it.",
                "The original authors recommend a GPU with more than 32 GB of memory for this model.",
                (
                    "Some MS-COCO captions also appear in the YFCC subset; the authors found the FID barely "
                    "changes when they are removed."
                ),
            ),
        ),
    )
}


def get_release(name: str) -> Release:
    """The :class:`Release` called ``name`` (e.g. ``"imagenet-1.4b"``); ``ValueError`` lists valid names."""
    try:
        return RELEASES[name]
    except KeyError:
        raise ValueError(f"release: expected one of {', '.join(RELEASES)}, got {name!r}") from None
