"""Original release folders -> Hugging Face folders.

An original release is a folder with ``stage1/{config.yaml,model.pt}`` (RQ-VAE) and, for generative
releases, ``stage2/{config.yaml,model.pt}`` (RQ-Transformer); a stage-1 folder may also be given directly.
``model.pt`` is read with ``torch.load(weights_only=True)`` (no arbitrary unpickling), ``config.yaml`` with
PyYAML (no OmegaConf needed). Output folders are written under a temporary name and renamed at the end,
so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .atomic_io import write_folder_atomically
from .conversion_rqvae import convert_rqvae_state_dict, rqvae_config_from_original
from .modeling_rqvae import RQVAEModel


@dataclass(frozen=True)
class OriginalStage:
    """One stage of an original release: its parsed ``config.yaml`` and the path of its ``model.pt``."""

    config: dict
    checkpoint: Path


@dataclass(frozen=True)
class OriginalRelease:
    stage1: OriginalStage
    stage2: OriginalStage | None


def read_original_config(path: str | os.PathLike) -> dict:
    """Parse an original ``config.yaml`` (a saved OmegaConf config: plain YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config: expected an original config.yaml file, got missing path {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"config: expected valid YAML in {path}, got a parse error: {error}") from None
    if not isinstance(config, dict) or "arch" not in config:
        raise ValueError(
            f"config: expected a mapping with an 'arch' section in {path}, got {type(config).__name__}"
        )
    return config


def load_original_state_dict(path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` (or ``state_dict_ema`` with ``use_ema``) of an original ``model.pt``, on the CPU.

    Raises:
        ValueError: the file is missing, truncated or corrupted, holds something other than tensors, or lacks
            the requested state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint: expected an original model.pt file, got missing path {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"checkpoint: expected a readable torch.save file at {path}, got an error: {reason}"
        ) from None
    key = "state_dict_ema" if use_ema else "state_dict"
    if not isinstance(checkpoint, dict) or key not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"checkpoint: expected a dict with '{key}' in {path}, got {found}")
    state_dict = checkpoint[key]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"checkpoint: expected '{key}' to map names to tensors in {path}")
    return state_dict


def _read_stage(folder: Path) -> OriginalStage:
    return OriginalStage(config=read_original_config(folder / "config.yaml"), checkpoint=folder / "model.pt")


def find_original_release(checkpoint_dir: str | os.PathLike) -> OriginalRelease:
    """Locate the stages of an original release folder, or of a stage-1 folder given directly."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise ValueError(f"checkpoint_dir: expected an original release folder, got missing path {folder}")
    if (folder / "stage1").is_dir():
        stage2 = _read_stage(folder / "stage2") if (folder / "stage2").is_dir() else None
        return OriginalRelease(stage1=_read_stage(folder / "stage1"), stage2=stage2)
    if (folder / "config.yaml").is_file():
        stage = _read_stage(folder)
        arch_type = stage.config["arch"].get("type")
        if arch_type != "rq-vae":
            raise ValueError(
                f"checkpoint_dir: expected a release folder (stage1/, stage2/) or a stage-1 folder (arch.type "
                f"rq-vae), got a folder with arch.type {arch_type!r}"
            )
        return OriginalRelease(stage1=stage, stage2=None)
    raise ValueError(
        f"checkpoint_dir: expected a folder with stage1/ (and stage2/) or with config.yaml and model.pt, got {folder}"
    )


def _load_converted(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load a converted state dict strictly, turning key mismatches into one clear ValueError."""
    expected = model.state_dict()
    missing, unexpected = (
        sorted(expected.keys() - state_dict.keys()),
        sorted(state_dict.keys() - expected.keys()),
    )
    if missing or unexpected:
        raise ValueError(
            f"{what}: expected the keys of the model, got missing {missing} and unexpected {unexpected}"
        )
    mismatched = [
        f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if v.shape != expected[k].shape
    ]
    if mismatched:
        raise ValueError(f"{what}: expected tensor shapes of the config, got {mismatched}")
    model.load_state_dict(state_dict, strict=True)


def convert_rqvae(stage: OriginalStage, use_ema: bool = False) -> RQVAEModel:
    """Build an [`RQVAEModel`] from an original stage-1 config and checkpoint."""
    config = rqvae_config_from_original(stage.config)
    model = RQVAEModel(**config)
    state_dict = convert_rqvae_state_dict(load_original_state_dict(stage.checkpoint, use_ema), config)
    _load_converted(model, state_dict, "stage1 state_dict")
    return model.eval()


def convert_rqtransformer(stage: OriginalStage, vqvae: RQVAEModel, use_ema: bool = False):
    """Build an [`RQTransformerForImageGeneration`] from an original stage-2 config and checkpoint, with a copy of
    the codebooks of the converted `vqvae` and the release's sampling defaults as its generation config."""
    from .conversion_rqtransformer import rqtransformer_from_original

    state_dict = load_original_state_dict(stage.checkpoint, use_ema)
    return rqtransformer_from_original(stage.config, state_dict, vqvae.get_codebook_embeddings())


def load_caption_tokenizer(tokenizer_dir: str | os.PathLike):
    """A caption tokenizer from a converted folder (`tokenizer.json`) or from the original files
    (`bpe-16k-vocab.json`, `bpe-16k-merges.txt`), converted on the fly."""
    from transformers import AutoTokenizer

    from .conversion_tokenizer import convert_rq_tokenizer

    folder = Path(tokenizer_dir)
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    vocab, merges = folder / "bpe-16k-vocab.json", folder / "bpe-16k-merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise ValueError(
            f"tokenizer_dir: expected a folder with tokenizer.json or with bpe-16k-vocab.json and "
            f"bpe-16k-merges.txt, got {folder}"
        )
    with tempfile.TemporaryDirectory() as converted:
        return AutoTokenizer.from_pretrained(
            convert_rq_tokenizer(vocab, merges, Path(converted) / "tokenizer")
        )


def conditioning_of(transformer) -> str:
    """``"text"``, ``"class"`` or ``"unconditional"`` from an RQ-Transformer config."""
    config = transformer.config
    if config.condition_sequence_length > 1:
        return "text"
    return "class" if config.is_conditional else "unconditional"


def converted_model_card(pipeline, release: str | None, repo_id: str | None):
    """The card of a converted pipeline: the release's card, or a generic one under the original license."""
    from .model_card import RELEASE_LICENSE, make_model_card

    if release is not None:
        return make_model_card(release, repo_id=repo_id)
    return make_model_card(
        None,
        repo_id=repo_id,
        conditioning=conditioning_of(pipeline.transformer),
        title="RQ-Transformer converted from an original kakaobrain/rq-vae-transformer checkpoint",
        license=RELEASE_LICENSE,
    )


def convert_original_checkpoint(
    checkpoint_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    use_ema: bool = False,
    overwrite: bool = False,
    release: str | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    push_to_hub: str | None = None,
) -> Path:
    """Convert an original release into a pipeline folder, or a stage-1 folder into ``output_dir/vqvae``.

    With both stages, ``output_dir`` becomes a full [`RQPipeline`] folder: ``model_index.json``, ``vqvae/``,
    ``transformer/`` (with the release's sampling defaults in ``generation_config.json``), ``tokenizer/``
    for text models, and the model card ``README.md``.

    Args:
        checkpoint_dir: original release folder (``stage1/``, ``stage2/``) or a stage-1 folder.
        output_dir: destination; must be new or empty unless ``overwrite``.
        use_ema: convert ``state_dict_ema`` instead of ``state_dict``.
        release: name of the original release (see ``rq_hf.releases``) whose model card to write.
        tokenizer_dir: caption tokenizer of a text-to-image release (converted folder or original files);
            without it a text pipeline takes pre-tokenized ``condition_ids`` only.
        push_to_hub: Hub repo id to upload the written folder to.
    """
    if release is not None:
        from .releases import get_release

        get_release(release)  # fail before any work on an unknown name
    original = find_original_release(checkpoint_dir)
    if original.stage2 is None and (release or tokenizer_dir):
        raise ValueError(
            "release, tokenizer_dir: expected a release folder with stage2/ for a pipeline, got stage 1 only"
        )
    vqvae = convert_rqvae(original.stage1, use_ema)
    if original.stage2 is None:
        write = lambda folder: vqvae.save_pretrained(folder / "vqvae", safe_serialization=True)  # noqa: E731
    else:
        from .pipeline_rq import RQPipeline

        transformer = convert_rqtransformer(original.stage2, vqvae, use_ema)
        tokenizer = None if tokenizer_dir is None else load_caption_tokenizer(tokenizer_dir)
        if tokenizer is not None and conditioning_of(transformer) != "text":
            raise ValueError(
                f"tokenizer_dir: expected none for a {conditioning_of(transformer)} model, got a tokenizer"
            )
        if tokenizer is not None and len(tokenizer) > transformer.config.condition_vocab_size:
            raise ValueError(
                f"tokenizer_dir: expected at most {transformer.config.condition_vocab_size} tokens (the model's "
                f"condition vocabulary), got {len(tokenizer)}"
            )
        pipeline = RQPipeline(vqvae=vqvae, transformer=transformer, tokenizer=tokenizer)
        card = converted_model_card(pipeline, release, push_to_hub)

        def write(folder: Path) -> None:
            pipeline.save_pretrained(folder, model_card=card)

    path = write_folder_atomically(output_dir, write, overwrite)
    if push_to_hub is not None:
        from huggingface_hub import HfApi

        api = HfApi()
        repo_id = api.create_repo(push_to_hub, exist_ok=True).repo_id
        api.upload_folder(
            repo_id=repo_id, folder_path=path, commit_message="Convert the original release with rq-hf"
        )
    return path
