"""RQPipeline: RQ-Transformer code generation + RQ-VAE decoding as a diffusers pipeline."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from huggingface_hub import HfApi, ModelCard, snapshot_download

from .clip_reranking import load_clip, rerank_candidates
from .modeling_rqtransformer import RQTransformerForImageGeneration
from .modeling_rqvae import RQVAEModel, checked_pixels

#: Files a pipeline folder may hold; `download` fetches only these (no optimizer states, no pickles).
PIPELINE_FILE_PATTERNS = [
    "model_index.json",
    "README.md",
    "*/config.json",
    "*/generation_config.json",
    "*/*.safetensors",
    "*/*.safetensors.index.json",
    "tokenizer/*",
]


@dataclass
class RQPipelineOutput(ImagePipelineOutput):
    """Output of [`RQPipeline`].

    Args:
        images: PIL images, a numpy array `(B, H, W, 3)` or a tensor `(B, 3, H, W)`, values in [0, 1].
        clip_scores: with CLIP re-ranking, the CLIP score (cosine similarity) of each kept image, best first
            within each prompt; else `None`.
    """

    clip_scores: torch.Tensor | None = None


def component_mismatches(vqvae: RQVAEModel, transformer: RQTransformerForImageGeneration) -> list[str]:
    """What differs between an RQ-VAE and an RQ-Transformer that must agree to work together (empty: none)."""
    problems = []
    vq_shape, tr_shape = tuple(vqvae.code_shape), tuple(transformer.config.code_shape)
    if vq_shape != tr_shape:
        problems.append(f"code shape (h, w, D): vqvae {vq_shape} vs transformer {tr_shape}")
    if list(vqvae.codebook_sizes) != list(transformer.config.vocab_size):
        problems.append(
            f"codebook sizes: vqvae {vqvae.codebook_sizes} vs transformer {transformer.config.vocab_size}"
        )
    if vqvae.quantizer.code_dim != transformer.config.codebook_dim:
        problems.append(
            f"code embedding width: vqvae {vqvae.quantizer.code_dim} vs transformer {transformer.config.codebook_dim}"
        )
    copy = transformer.code_embeddings.codebook
    if not problems and copy is not None:
        codebooks = vqvae.get_codebook_embeddings()
        expected = codebooks[0] if transformer.config.shared_codebook else torch.cat(codebooks)
        if copy.shape != expected.shape or not torch.equal(copy.float().cpu(), expected.cpu()):
            problems.append(
                "codebook copy: the transformer's codebook copy differs from the vqvae's codebooks"
            )
    return problems


class RQPipeline(DiffusionPipeline):
    r"""Image generation with an RQ-Transformer and an RQ-VAE (Lee et al., CVPR 2022).

    Components:
        vqvae ([`RQVAEModel`]): decodes code stacks `(B, h, w, D)` into images.
        transformer ([`RQTransformerForImageGeneration`]): samples the code stacks, unconditionally, from class
            ids, or from caption token ids.
        tokenizer (`PreTrainedTokenizerFast`, *optional*): the caption tokenizer of text-to-image models.

    `import rq_hf` makes the component classes importable, which diffusers needs to load a saved folder;
    load with `RQPipeline.from_pretrained(local_folder_or_repo_id)`.
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _optional_components = ["tokenizer"]

    def __init__(self, vqvae: RQVAEModel, transformer: RQTransformerForImageGeneration, tokenizer=None):
        super().__init__()
        problems = component_mismatches(vqvae, transformer)
        if problems:
            raise ValueError("vqvae, transformer: expected components that agree, got " + "; ".join(problems))
        self.register_modules(vqvae=vqvae, transformer=transformer, tokenizer=tokenizer)
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)

    # -- conditions ---------------------------------------------------------------------------------------
    def _class_condition(self, class_labels, num_images_per_prompt: int) -> torch.Tensor:
        config = self.transformer.config
        labels = [class_labels] if isinstance(class_labels, Integral) else class_labels
        if isinstance(labels, torch.Tensor):
            labels = labels.flatten().tolist()
        if (
            not isinstance(labels, Sequence)
            or not labels
            or not all(isinstance(label, Integral) and not isinstance(label, bool) for label in labels)
        ):
            raise ValueError(
                f"class_labels: expected an int or a non-empty list of ints, got {class_labels!r}"
            )
        bad = [label for label in labels if not 0 <= label < config.condition_vocab_size]
        if bad:
            raise ValueError(f"class_labels: expected ids in [0, {config.condition_vocab_size}), got {bad}")
        ids = torch.tensor(labels, dtype=torch.long).repeat_interleave(num_images_per_prompt)
        return ids[:, None].expand(-1, config.condition_sequence_length)

    def _prompt_condition(self, prompt, num_images_per_prompt: int) -> torch.Tensor:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, Sequence) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt: expected a string or a non-empty list of strings, got {prompt!r}")
        if self.tokenizer is None:
            raise ValueError("prompt: expected a pipeline with a tokenizer (a text-to-image model), got none")
        length = self.transformer.config.condition_sequence_length
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=length)[
            "input_ids"
        ]
        return torch.tensor(ids, dtype=torch.long).repeat_interleave(num_images_per_prompt, dim=0)

    def prepare_condition_ids(
        self, class_labels, prompt, num_images_per_prompt: int, condition_ids: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Condition ids `(B, Lc)` for the transformer, or `None` for an unconditional model."""
        given = [
            name
            for name, value in (
                ("class_labels", class_labels),
                ("prompt", prompt),
                ("condition_ids", condition_ids),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(f"{', '.join(given)}: expected at most one of them, got {len(given)}")
        if condition_ids is not None:
            if not isinstance(condition_ids, torch.Tensor) or condition_ids.dim() != 2:
                got = tuple(condition_ids.shape) if isinstance(condition_ids, torch.Tensor) else condition_ids
                raise ValueError(f"condition_ids: expected a tensor (B, Lc), got {got!r}")
            return condition_ids.repeat_interleave(num_images_per_prompt, dim=0)
        conditional = self.transformer.config.is_conditional
        if class_labels is not None:
            if not conditional or self.tokenizer is not None:
                raise ValueError(
                    "class_labels: expected None for a model that is not class-conditional, got labels"
                )
            return self._class_condition(class_labels, num_images_per_prompt)
        if prompt is not None:
            return self._prompt_condition(prompt, num_images_per_prompt)
        if conditional:
            what = "prompt" if self.tokenizer is not None else "class_labels"
            raise ValueError(f"{what}: expected a condition for this conditional model, got None")
        return None

    # -- generation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | Sequence[int] | None = None,
        prompt: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        temperature: float | None = None,
        top_k: int | Sequence[int] | None = None,
        top_p: float | Sequence[float] | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        decode_batch_size: int | None = None,
        condition_ids: torch.LongTensor | None = None,
        rerank_with: str | os.PathLike | tuple | None = None,
        num_candidates: int | None = None,
        compile: bool | dict = False,
    ) -> RQPipelineOutput | tuple:
        r"""Generate images.

        Args:
            class_labels: class id(s) for class-conditional models.
            prompt: caption(s) for text-to-image models.
            num_images_per_prompt: images per class label / prompt (the batch size of unconditional models).
            temperature, top_k, top_p: sampling settings; `None` takes the transformer's `generation_config` (the
                release's settings). `top_k`/`top_p` take one value or one per depth.
            guidance_scale: classifier-free guidance scale (needs a model trained with a null condition); `None`
                takes the `generation_config`'s, else 1 (no guidance).
            generator: `torch.Generator` on the pipeline's device, for reproducible images.
            output_type: `"pil"`, `"np"` (float `(B, H, W, 3)` in [0, 1]) or `"pt"` (float `(B, 3, H, W)` in [0, 1]).
            decode_batch_size: images per RQ-VAE decoding batch (default: all at once).
            condition_ids: pre-tokenized condition ids `(B, Lc)` instead of `class_labels` / `prompt` (e.g. the
                token ids of captions tokenized elsewhere).
            rerank_with: CLIP model id or path (or a `(CLIPModel, CLIPProcessor)` pair): draw `num_candidates`
                images per prompt and keep the `num_images_per_prompt` with the highest CLIP score.
            num_candidates: candidates per prompt for re-ranking (default 64, the original notebook's).
            compile: compile the transformer's decoding step (see [`RQTransformerForImageGeneration.generate`]):
                `True` (CUDA graphs on GPU, autotuned GEMM templates on frozen weights on CPU) or a dict of
                `torch.compile` options.

        Returns:
            [`RQPipelineOutput`] with `images` (and `clip_scores` when re-ranking), or a tuple.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type: expected 'pil', 'np' or 'pt', got {output_type!r}")
        for name, value in (
            ("num_images_per_prompt", num_images_per_prompt),
            ("decode_batch_size", decode_batch_size),
        ):
            if value is not None and (
                not isinstance(value, Integral) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        num_keep = num_images_per_prompt
        if rerank_with is not None:
            if prompt is None:
                raise ValueError("rerank_with: expected a prompt to score the images against, got no prompt")
            num_candidates = 64 if num_candidates is None else num_candidates
            if (
                not isinstance(num_candidates, Integral)
                or isinstance(num_candidates, bool)
                or num_candidates < num_keep
            ):
                raise ValueError(
                    f"num_candidates: expected an int >= num_images_per_prompt ({num_keep}), got {num_candidates!r}"
                )
            clip_model, clip_processor = load_clip(rerank_with)
            num_images_per_prompt = num_candidates
        elif num_candidates is not None:
            raise ValueError("num_candidates: expected None without rerank_with, got a value")
        condition_ids = self.prepare_condition_ids(class_labels, prompt, num_images_per_prompt, condition_ids)
        if condition_ids is not None:
            condition_ids = condition_ids.to(self.device)

        with self.progress_bar(total=2) as progress:
            codes = self.transformer.generate(
                condition_ids=condition_ids,
                num_samples=num_images_per_prompt if condition_ids is None else None,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                guidance_scale=guidance_scale,
                generator=generator,
                compile=compile,
            )
            progress.update()
            images = self.decode_codes(codes, decode_batch_size)
            progress.update()

        scores = None
        if rerank_with is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            images, scores = rerank_candidates(
                (images + 1) / 2, prompts, num_images_per_prompt, num_keep, clip_model, clip_processor
            )
            images = images * 2 - 1
        images = self.image_processor.postprocess(images, output_type=output_type)
        if not return_dict:
            return (images,) if scores is None else (images, scores)
        return RQPipelineOutput(images=images, clip_scores=scores)

    def fuse_qkv_projections(self) -> None:
        """Fuse the transformer's query/key/value projections (see
        [`RQTransformerForImageGeneration.fuse_qkv_projections`]); inference only."""
        self.transformer.fuse_qkv_projections()

    def unfuse_qkv_projections(self) -> None:
        """Undo [`fuse_qkv_projections`]."""
        self.transformer.unfuse_qkv_projections()

    def decode_codes(self, codes: torch.LongTensor, batch_size: int | None = None) -> torch.Tensor:
        """Codes `(B, h, w, D)` -> images `(B, 3, H, W)` in [-1, 1], decoded `batch_size` at a time.

        Raises:
            FloatingPointError: the decoder produced NaN or infinite values.
        """
        batch_size = batch_size or codes.shape[0]
        return checked_pixels(
            torch.cat([self.vqvae.decode_codes(chunk).sample for chunk in codes.split(batch_size)])
        )

    # -- Hub ----------------------------------------------------------------------------------------------
    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs) -> str:
        """Download a pipeline repo with `huggingface_hub.snapshot_download` (diffusers' own download rejects
        components from packages other than diffusers/transformers). Takes `cache_dir`, `revision`, `token`,
        `local_files_only`, `force_download`; other diffusers download options are not used."""
        options = {
            key: kwargs[key] for key in ("cache_dir", "revision", "token", "force_download") if key in kwargs
        }
        return snapshot_download(
            pretrained_model_name,
            allow_patterns=PIPELINE_FILE_PATTERNS,
            local_files_only=bool(kwargs.get("local_files_only", False)),
            **{key: value for key, value in options.items() if value is not None},
        )

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, model_card: ModelCard | None = None, **kwargs
    ) -> None:
        """Write `model_index.json`, `vqvae/`, `transformer/` (and `tokenizer/`) in safetensors, plus the model
        card as `README.md` when one is given."""
        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, **kwargs)
        if model_card is not None:
            model_card.save(os.path.join(save_directory, "README.md"))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        model_card: ModelCard | None = None,
        commit_message: str = "Upload RQPipeline",
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
    ):
        """Create (or reuse) the Hub repo `repo_id` and upload the saved pipeline with its model card."""
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, model_card=model_card)
            return api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message, create_pr=create_pr
            )
