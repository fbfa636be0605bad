"""Hub model cards (``README.md``) for converted original releases and for models trained with rq-hf.

The card is ``huggingface_hub.ModelCardData`` metadata (license, ``library_name: rq_hf``, pipeline tag,
tags, datasets, a ``model-index`` of :class:`~rq_hf.releases.Metric` numbers) on top of the Jinja template
shipped in ``rq_hf/templates/model_card_template.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.resources import files

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .releases import (
    ORIGINAL_REPO_URL,
    PAPER_URL,
    PIPELINE_TAGS,
    Conditioning,
    Metric,
    Release,
    SamplingDefaults,
    get_release,
)

RELEASE_LICENSE = "cc-by-nc-sa-4.0"
DEFAULT_LICENSE = "apache-2.0"
LIBRARY_NAME = "rq_hf"

_TAGS = [
    "rq-vae",
    "rq-transformer",
    "residual-quantization",
    "autoregressive",
    "image-generation",
    "arxiv:2203.01941",
]
_TASK_NAMES = {
    "unconditional": "Unconditional image generation",
    "class": "Class-conditional image generation",
    "text": "Text-to-image generation",
}
_CLASS_TAG_NOTE = (
    "The Hub has no class-conditional image-generation task, so this card uses "
    "`unconditional-image-generation`, the nearest one: the model takes no text and no image, only a class "
    "id (`text-to-image` would promise a prompt it cannot read). The tag "
    "`class-conditional-image-generation` marks it."
)
_SEED = "generator=torch.Generator().manual_seed(0)"


def make_model_card(
    release: Release | str | None,
    *,
    repo_id: str | None = None,
    model_config_summary: Mapping[str, object] | None = None,
    extra_metrics: Sequence[Metric] | None = None,
    conditioning: Conditioning | None = None,
    title: str | None = None,
    datasets: Sequence[str] | None = None,
    dataset_description: str | None = None,
    sampling: SamplingDefaults | None = None,
    license: str | None = None,
) -> ModelCard:
    """The model card of an original release (``release``: a :class:`Release` or its name) or of a model
    trained with rq-hf (``release=None``).

    Args:
        release: the original release, by object or name (see :data:`rq_hf.releases.RELEASES`), or ``None``.
        repo_id: Hub repo id (or local folder) that the usage snippet loads; default ``rq-<release name>``,
            the converter's output folder, for releases.
        model_config_summary: extra rows for the architecture table (label -> value), e.g. counted
            parameters; a label already in the table replaces its value.
        extra_metrics: numbers measured with rq-hf, added to the model-index after the paper's.
        conditioning, title, datasets, dataset_description, sampling, license: describe a model trained with
            rq-hf (``conditioning`` is then required; ``license`` defaults to apache-2.0). An original release
            carries its own, so they must stay ``None`` with one.

    Raises:
        ValueError: unknown release name, a description argument given with a release, or a missing or
            unknown ``conditioning`` without one.
        TypeError: an ``extra_metrics`` entry that is not a :class:`Metric`.
    """
    if isinstance(release, str):
        release = get_release(release)
    extra_metrics = list(extra_metrics or ())
    for metric in extra_metrics:
        if not isinstance(metric, Metric):
            raise TypeError(
                f"extra_metrics: expected rq_hf.releases.Metric entries, got {type(metric).__name__}"
            )
    description = {
        "conditioning": conditioning,
        "title": title,
        "datasets": datasets,
        "dataset_description": dataset_description,
        "sampling": sampling,
        "license": license,
    }
    if release is not None:
        for name, value in description.items():
            if value is not None:
                raise ValueError(
                    f"{name}: expected None for the original release {release.name!r}, got {value!r}"
                )
        context = _release_context(release, repo_id)
    else:
        if conditioning not in PIPELINE_TAGS:
            raise ValueError(
                f"conditioning: expected one of {', '.join(PIPELINE_TAGS)} for a model trained with rq-hf, "
                f"got {conditioning!r}"
            )
        context = _trained_context(
            conditioning, repo_id, title, datasets, dataset_description, sampling, license or DEFAULT_LICENSE
        )
    context["architecture"] = _merge_rows(context["architecture"], model_config_summary or {})
    context["metrics"] = list(context["metrics"]) + extra_metrics
    context["pipeline_tag_note"] = _CLASS_TAG_NOTE if context["conditioning"] == "class" else None
    card_data = _card_data(context)
    template = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    ).from_string(files("rq_hf").joinpath("templates/model_card_template.md").read_text(encoding="utf-8"))
    return ModelCard(
        template.render(
            card_data=card_data.to_yaml(), paper_url=PAPER_URL, original_repo_url=ORIGINAL_REPO_URL, **context
        )
    )


def _release_context(release: Release, repo_id: str | None) -> dict:
    """Template variables of an original release."""
    local_dir = f"rq-{release.name}"
    convert = None
    if repo_id is None:
        convert = (
            f"rq-hf convert --checkpoint_dir ORIGINAL_DIR --output_dir {local_dir} --release {release.name}"
        )
    return {
        "release": release,
        "title": release.title,
        "model_name": (repo_id or local_dir).rsplit("/", 1)[-1],
        "conditioning": release.conditioning,
        "conditioning_sentence": _release_conditioning_sentence(release),
        "dataset_description": release.dataset_description,
        "datasets": list(release.datasets),
        "notes": list(release.notes),
        "architecture": _release_architecture(release),
        "convert_command": convert,
        "load_path": repo_id or local_dir,
        "usage_call": _usage_call(release.conditioning, imagenet=release.conditioning == "class"),
        "sampling": release.sampling,
        "sampling_origin": "from the released config; the authors evaluated with them",
        "metrics": release.metrics,
        "rejection_fid": release.rejection_fid,
        "license": RELEASE_LICENSE,
        "image_size": release.image_size,
        "cond_length": release.cond_length,
    }


def _trained_context(
    conditioning: Conditioning,
    repo_id: str | None,
    title: str | None,
    datasets: Sequence[str] | None,
    dataset_description: str | None,
    sampling: SamplingDefaults | None,
    license: str,
) -> dict:
    """Template variables of a model trained with rq-hf."""
    name = repo_id.rsplit("/", 1)[-1] if repo_id else "rq-hf-model"
    sentences = {
        "unconditional": "An unconditional image generator: it draws images like those of its training set.",
        "class": "A class-conditional image generator: it draws an image of a class given as an integer id.",
        "text": "A text-to-image generator: it draws an image from a text prompt.",
    }
    return {
        "release": None,
        "title": title or name,
        "model_name": name,
        "conditioning": conditioning,
        "conditioning_sentence": sentences[conditioning],
        "dataset_description": dataset_description or "see the training configuration in this repository",
        "datasets": list(datasets or ()),
        "notes": [],
        "architecture": [],
        "convert_command": None,
        "load_path": repo_id or "path/to/this/folder",
        "usage_call": _usage_call(conditioning, imagenet=False),
        "sampling": sampling,
        "sampling_origin": "chosen when the model was trained",
        "metrics": [],
        "license": license,
    }


def _release_conditioning_sentence(release: Release) -> str:
    """What the release does, in one sentence."""
    size = f"{release.image_size}x{release.image_size}"
    if release.conditioning == "class":
        return (
            f"A class-conditional image generator: it draws a {size} image of any of the 1000 ImageNet "
            "classes, given as ids 0-999 in the standard ImageNet-1k order (for example 207 golden "
            "retriever, 360 otter)."
        )
    if release.conditioning == "text":
        return (
            f"A text-to-image generator: it draws a {size} image from an English prompt of up to "
            f"{release.cond_length} BPE tokens."
        )
    return f"An unconditional image generator: it draws {size} images like those of its training set."


def _usage_call(conditioning: Conditioning, *, imagenet: bool) -> str:
    """The pipeline call of the usage snippet."""
    if conditioning == "class":
        labels = "[207, 360]" if imagenet else "[0, 1]"
        comment = "  # 207: golden retriever, 360: otter" if imagenet else ""
        return f"images = pipe(class_labels={labels}, {_SEED}).images{comment}"
    if conditioning == "text":
        return f'images = pipe(prompt="a painting of a cat", {_SEED}).images'
    return f"images = pipe(num_images_per_prompt=4, {_SEED}).images"


def _release_architecture(release: Release) -> list[tuple[str, str]]:
    """Rows of the architecture table of a release."""
    h, w, depth = release.code_shape
    attention = f"attention at {release.rqvae_attention_resolution}x{release.rqvae_attention_resolution}"
    if release.conditioning == "class":
        condition = f"class id, {release.cond_vocab_size} classes"
    elif release.conditioning == "text":
        condition = f"{release.cond_length} BPE tokens, vocabulary {release.cond_vocab_size:,}"
    else:
        condition = "none (a single start token)"
    return [
        ("Image size", f"{release.image_size}x{release.image_size}"),
        ("Code map (h x w x D)", f"{h}x{w}x{depth}"),
        ("Codebook size K", f"{release.codebook_size:,}, shared by the {depth} depths"),
        ("RQ-VAE parameters", f"{release.rqvae_params / 1e6:.1f}M (computed from the architecture)"),
        ("RQ-VAE encoder/decoder", f"128 x (1, 1, 2, 2, 4, 4) channels, 2 resblocks per level, {attention}"),
        ("Code embedding width", str(release.input_embed_dim)),
        ("RQ-Transformer parameters", f"{release.transformer_params} (as stated by the authors)"),
        ("Transformer width E", str(release.embed_dim)),
        ("Spatial transformer", f"{release.spatial_layers} layers, {release.num_heads} heads"),
        ("Depth transformer", f"{release.depth_layers} layers, {release.num_heads} heads"),
        ("Condition", condition),
    ]


def _merge_rows(rows: list[tuple[str, str]], extra: Mapping[str, object]) -> list[tuple[str, str]]:
    """``rows`` with ``extra``'s values replacing rows of the same label, then its new labels appended."""
    merged = dict(rows)
    merged.update((str(label), str(value)) for label, value in extra.items())
    return list(merged.items())


def _card_data(context: dict) -> ModelCardData:
    """The YAML metadata: license, library, task, tags, datasets and the model-index."""
    conditioning = context["conditioning"]
    pipeline_tag = PIPELINE_TAGS[conditioning]
    eval_results = [
        EvalResult(
            task_type=pipeline_tag,
            task_name=_TASK_NAMES[conditioning],
            dataset_type=m.dataset_type,
            dataset_name=m.dataset_name,
            dataset_split=m.dataset_split,
            metric_type=m.metric_type,
            metric_value=m.value,
            metric_name=m.name,
            metric_config=m.config,
            verified=False,
            source_name=m.source_name if m.source_url else None,
            source_url=m.source_url,
        )
        for m in context["metrics"]
    ]
    tags = _TAGS + (["class-conditional-image-generation"] if conditioning == "class" else [])
    return ModelCardData(
        license=context["license"],
        library_name=LIBRARY_NAME,
        pipeline_tag=pipeline_tag,
        tags=tags,
        datasets=context["datasets"] or None,
        language=["en"] if conditioning == "text" else None,
        model_name=context["model_name"],
        eval_results=eval_results or None,
    )
