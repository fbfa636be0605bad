#!/usr/bin/env python
"""Train an RQ-Transformer (stage 2 of Lee et al., CVPR 2022) on the codes of a frozen RQ-VAE with Accelerate.

    accelerate launch training/train_rqtransformer.py --vqvae rqvae-mnist \\
        --model_config training/configs/rqtransformer-mnist.json --label_column label \\
        --dataset_name parquet --train_data_files mnist.parquet --output_dir rq-mnist

Class labels (`--label_column`), captions (`--caption_column` with `--tokenizer`, BPE dropout while training,
loss 0.9 codes + 0.1 text as the original) or nothing (unconditional). Targets are the RQ-VAE's codes, or its
soft codes at `--soft_label_temperature` (the paper's soft labels; `--stochastic_codes` also draws the input
codes from them). `--condition_dropout` replaces conditions by a reserved null id (classifier-free guidance).
The original optimizer: AdamW betas (0.9, 0.95), weight decay 1e-4, gradient clipping 1.0, cosine schedule.
The result is an `RQPipeline` folder (vqvae + transformer + model card) in `--output_dir`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass

import datasets
import torch
from accelerate.logging import get_logger
from common import (
    ImageTransform,
    add_data_arguments,
    add_optimization_arguments,
    add_run_arguments,
    check_common_arguments,
    check_image_column,
    check_resolution,
    data_description,
    flag_error,
    hub_dataset_id,
    image_grid,
    load_rqvae,
    load_training_dataset,
    locate_component,
    log_image,
    make_accelerator,
    make_dataloader,
    make_examples,
    push_folder,
    register_pretrained_hooks,
    restore_state,
    resume_checkpoint,
    run_script,
    save_checkpoint,
    start_run,
    step_progress,
    training_batches,
    training_length,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from huggingface_hub import ModelCard
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from rq_hf import RQPipeline, RQTransformerConfig, RQTransformerForImageGeneration, RQVAEModel
from rq_hf.conversion_tokenizer import with_bpe_dropout
from rq_hf.model_card import make_model_card
from rq_hf.pipeline_rq import component_mismatches
from rq_hf.releases import Metric, SamplingDefaults

logger = get_logger(__name__)


@dataclass(frozen=True)
class Conditioning:
    """What the transformer is conditioned on: `kind` ("class", "text", "unconditional"), the condition
    vocabulary (null id included), the condition length, the null id (with condition dropout) and, for
    classes, the number of real classes."""

    kind: str
    vocab_size: int
    length: int
    null_id: int | None
    num_classes: int = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_argument_group("model")
    model.add_argument(
        "--vqvae", required=True, help="frozen RQ-VAE: model folder, pipeline folder or Hub repo"
    )
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model_config",
        help="RQTransformerConfig JSON; code shape, vocab sizes, codebook width "
        "and the condition entries are filled from the RQ-VAE and the data when absent",
    )
    source.add_argument(
        "--pretrained_model", help="transformer folder, pipeline folder or Hub repo to fine-tune"
    )
    condition = parser.add_argument_group("conditioning")
    condition.add_argument("--label_column", help="class ids (ClassLabel or int column): class-conditional")
    condition.add_argument("--caption_column", help="captions: text-conditional (needs --tokenizer)")
    condition.add_argument("--tokenizer", help="caption tokenizer folder (rq_hf.conversion_tokenizer output)")
    condition.add_argument("--bpe_dropout", type=float, default=0.1, help="BPE dropout while training")
    condition.add_argument(
        "--text_loss_weight",
        type=float,
        default=0.1,
        help="weight of the caption-token loss; the code loss gets 1 - weight",
    )
    condition.add_argument(
        "--condition_dropout",
        type=float,
        default=0.0,
        help="probability of replacing a condition by the null id (classifier-free guidance)",
    )
    targets = parser.add_argument_group("targets")
    targets.add_argument(
        "--soft_label_temperature",
        type=float,
        default=0.0,
        help="soft codes of the RQ-VAE at this temperature as targets (0: hard codes)",
    )
    targets.add_argument(
        "--stochastic_codes",
        action="store_true",
        help="draw the input codes from the soft codes (needs a temperature > 0)",
    )
    targets.add_argument(
        "--cache_codes",
        action="store_true",
        help="encode the dataset once with datasets.map (codes; latents with soft labels), "
        "center-cropped and unflipped",
    )
    ema = parser.add_argument_group("EMA")
    ema.add_argument(
        "--use_ema", action="store_true", help="keep an EMA of the weights; it is what gets saved"
    )
    ema.add_argument("--ema_decay", type=float, default=0.9999)
    sampling = parser.add_argument_group("sampling (validation and the saved generation_config)")
    sampling.add_argument("--top_k", type=int, help="top-k sampling default (default: none, or the model's)")
    sampling.add_argument(
        "--top_p", type=float, help="top-p sampling default (default: none, or the model's)"
    )
    sampling.add_argument("--temperature", type=float, help="sampling temperature default (default: 1)")
    sampling.add_argument(
        "--guidance_scale", type=float, default=1.0, help="guidance of the validation samples"
    )
    sampling.add_argument("--num_validation_images", type=int, default=4, help="samples per class or prompt")
    sampling.add_argument(
        "--validation_labels", type=int, nargs="+", help="classes to sample (default: first 10)"
    )
    sampling.add_argument("--validation_prompts", nargs="+", help="captions to sample (text models)")
    add_data_arguments(parser)
    add_optimization_arguments(
        parser,
        learning_rate=5e-4,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_weight_decay=1e-4,
        lr_scheduler="cosine",
        max_grad_norm=1.0,
    )
    add_run_arguments(parser)
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    """Flag checks that need no data and no model."""
    check_common_arguments(args)
    if args.label_column and args.caption_column:
        raise flag_error(
            "--label_column/--caption_column", "at most one of them", (args.label_column, args.caption_column)
        )
    if bool(args.caption_column) != bool(args.tokenizer):
        raise flag_error(
            "--tokenizer", "a tokenizer folder exactly when --caption_column is given", args.tokenizer
        )
    for flag in ("bpe_dropout", "text_loss_weight", "condition_dropout"):
        if not 0 <= getattr(args, flag) <= 1:
            raise flag_error(f"--{flag}", "a float in [0, 1]", getattr(args, flag))
    if args.condition_dropout > 0 and not (args.label_column or args.caption_column):
        raise flag_error("--condition_dropout", "0 for an unconditional model", args.condition_dropout)
    if args.soft_label_temperature < 0:
        raise flag_error(
            "--soft_label_temperature", "a float >= 0 (0: hard labels)", args.soft_label_temperature
        )
    if args.stochastic_codes and args.soft_label_temperature == 0:
        raise flag_error("--stochastic_codes", "a --soft_label_temperature > 0 to draw codes from", "0")
    if args.cache_codes and (args.streaming or args.random_flip):
        raise flag_error(
            "--cache_codes",
            "a map-style dataset without --random_flip (codes are encoded once)",
            "--streaming" if args.streaming else "--random_flip",
        )
    if args.num_validation_images < 1 or (args.top_k is not None and args.top_k < 1):
        raise flag_error(
            "--num_validation_images/--top_k", "ints >= 1", (args.num_validation_images, args.top_k)
        )
    if (args.top_p is not None and not 0 < args.top_p <= 1) or (
        args.temperature is not None and not args.temperature > 0
    ):
        raise flag_error(
            "--top_p/--temperature", "top_p in (0, 1] and temperature > 0", (args.top_p, args.temperature)
        )
    if not 0 < args.ema_decay < 1:
        raise flag_error("--ema_decay", "a float in (0, 1)", args.ema_decay)


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """The caption tokenizer (no BPE dropout)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise flag_error("--tokenizer", "a tokenizer folder", f"{path} ({error})") from error
    if not isinstance(tokenizer, PreTrainedTokenizerFast) or not 1 < tokenizer.model_max_length < 10**6:
        raise flag_error("--tokenizer", "a fast tokenizer with a model_max_length (the caption length)", path)
    return tokenizer


def conditioning_for(
    args: argparse.Namespace,
    dataset: datasets.Dataset | datasets.IterableDataset,
    tokenizer: PreTrainedTokenizerFast | None,
    config: dict,
) -> Conditioning:
    """The conditioning given by the flags, the data and (for int label columns) the model config."""
    dropout = args.condition_dropout > 0
    if args.label_column:
        feature = dataset.features[args.label_column] if dataset.features is not None else None
        if isinstance(feature, datasets.ClassLabel):
            num_classes = feature.num_classes
        elif "condition_vocab_size" in config:
            num_classes = config["condition_vocab_size"] - dropout
        else:
            raise flag_error(
                "--label_column",
                "a ClassLabel column, or condition_vocab_size in --model_config",
                f"{args.label_column}: {feature}",
            )
        return Conditioning("class", num_classes + dropout, 1, num_classes if dropout else None, num_classes)
    if args.caption_column:
        vocab = len(tokenizer)
        return Conditioning("text", vocab + dropout, tokenizer.model_max_length, vocab if dropout else None)
    return Conditioning("unconditional", 1, 1, None)


def derived_config(vqvae: RQVAEModel, conditioning: Conditioning) -> dict:
    """The transformer config entries that the RQ-VAE and the conditioning fix."""
    return {
        "code_shape": list(vqvae.code_shape),
        "vocab_size": list(vqvae.codebook_sizes),
        "codebook_dim": vqvae.quantizer.code_dim,
        "shared_codebook": bool(vqvae.config.shared_codebook),
        "condition_vocab_size": conditioning.vocab_size,
        "condition_length": conditioning.length,
        "null_condition_id": conditioning.null_id,
    }


def check_config(config: RQTransformerConfig, expected: dict, flag: str) -> None:
    """Raise `UsageError` where `config` disagrees with the RQ-VAE / conditioning entries `expected`."""
    actual = {
        "code_shape": list(config.code_shape),
        "vocab_size": list(config.vocab_size),
        "codebook_dim": config.codebook_dim,
        "shared_codebook": config.shared_codebook,
        "condition_vocab_size": config.num_condition_embeddings,
        "condition_length": config.condition_sequence_length,
        "null_condition_id": config.null_condition_id,
    }
    wrong = {key: actual[key] for key in expected if actual[key] != expected[key]}
    if wrong:
        wanted = {key: expected[key] for key in wrong}
        raise flag_error(
            flag, f"a transformer agreeing with --vqvae and the conditioning flags ({wanted})", wrong
        )


def build_transformer(
    args: argparse.Namespace, vqvae: RQVAEModel, dataset, tokenizer
) -> tuple[RQTransformerForImageGeneration, Conditioning]:
    """The transformer from `--model_config` (missing entries filled) or `--pretrained_model` (checked), with
    the RQ-VAE's codebooks; fails when the two models cannot work together."""
    if args.pretrained_model is not None:
        location, subfolder = locate_component(args.pretrained_model, "transformer", "--pretrained_model")
        try:
            transformer = RQTransformerForImageGeneration.from_pretrained(location, subfolder=subfolder or "")
        except (OSError, ValueError) as error:
            raise flag_error(
                "--pretrained_model",
                "a loadable RQTransformerForImageGeneration",
                f"{args.pretrained_model} ({error})",
            ) from error
        conditioning = conditioning_for(args, dataset, tokenizer, transformer.config.to_dict())
        check_config(transformer.config, derived_config(vqvae, conditioning), "--pretrained_model")
    else:
        try:
            with open(args.model_config, encoding="utf-8") as file:
                values = json.load(file)
        except (OSError, json.JSONDecodeError) as error:
            raise flag_error(
                "--model_config", "an RQTransformerConfig JSON file", f"{args.model_config} ({error})"
            ) from error
        conditioning = conditioning_for(args, dataset, tokenizer, values)
        expected = derived_config(vqvae, conditioning)
        try:
            config = RQTransformerConfig(**{**expected, **values})
        except (TypeError, ValueError) as error:
            raise flag_error(
                "--model_config", "a valid RQTransformerConfig", f"{args.model_config} ({error})"
            ) from error
        check_config(config, expected, "--model_config")
        transformer = RQTransformerForImageGeneration(config)
        transformer.load_codebooks_from_rqvae(vqvae)
        transformer.generation_config = GenerationConfig(do_sample=True, temperature=1.0)
    problems = component_mismatches(vqvae, transformer)
    if problems:
        raise flag_error("--vqvae", "the RQ-VAE the transformer was trained with", "; ".join(problems))
    if args.guidance_scale != 1 and conditioning.null_id is None:
        raise flag_error(
            "--guidance_scale", "1 without --condition_dropout (no null condition)", args.guidance_scale
        )
    if conditioning.kind == "class" and args.validation_labels:
        outside = [label for label in args.validation_labels if not 0 <= label < conditioning.num_classes]
        if outside:
            raise flag_error("--validation_labels", f"class ids in [0, {conditioning.num_classes})", outside)
    transformer.config.condition_loss_weight = args.text_loss_weight
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    transformer.generation_config.update(
        **{key: value for key, value in sampling.items() if value is not None}
    )
    return transformer, conditioning


def cache_codes(dataset: datasets.Dataset, vqvae: RQVAEModel, transform: ImageTransform, args, accelerator):
    """Encode the images once with `datasets.map` (the local main process first; the others reuse its cache):
    a `codes` column `(h, w, D)`, or with soft labels a `latents` column `(C, h', w')` to draw them from."""
    key = "codes" if args.soft_label_temperature == 0 else "latents"
    fingerprint = hashlib.sha256(json.dumps([dataset._fingerprint, key, transform.resolution]).encode())
    for name, tensor in sorted(vqvae.state_dict().items()):
        fingerprint.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    code_dtype = torch.int16 if max(vqvae.codebook_sizes) <= 2**15 else torch.int32

    @torch.no_grad()
    def encode(batch: dict) -> dict:
        images = torch.stack([transform(image) for image in batch[args.image_column]]).to(accelerator.device)
        latents = vqvae.encode(images).latents
        values = vqvae.quantize(latents)[1].to(code_dtype) if key == "codes" else latents
        return {key: values.cpu().numpy()}

    with accelerator.local_main_process_first():
        dataset = dataset.map(
            encode,
            batched=True,
            batch_size=args.train_batch_size,
            remove_columns=[args.image_column],
            new_fingerprint=fingerprint.hexdigest(),
            desc=f"caching {key}",
        )
    return dataset.with_format("torch", columns=[key], output_all_columns=True)


@torch.no_grad()
def code_targets(
    vqvae: RQVAEModel, batch: dict, temperature: float, stochastic: bool
) -> tuple[torch.LongTensor, torch.Tensor | None]:
    """Codes `(B, h, w, D)` (the transformer's input) and soft labels `(B, h, w, D, K)` or None (hard labels)
    of a batch holding `pixel_values`, cached `latents` or cached `codes`."""
    if "codes" in batch:
        return batch["codes"].long(), None
    latents = batch["latents"] if "latents" in batch else vqvae.encode(batch["pixel_values"]).latents
    if temperature == 0:
        return vqvae.quantize(latents)[1], None
    soft_labels, codes = vqvae.quantizer.soft_codes(latents, temperature, stochastic)
    return codes, soft_labels


def training_loss(
    transformer: torch.nn.Module,
    codes: torch.LongTensor,
    condition_ids: torch.LongTensor | None,
    soft_labels: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's training loss (cross-entropy of the codes, hard or soft targets; for text models mixed with
    that of the caption tokens by `config.condition_loss_weight`, set from `--text_loss_weight`) and its parts."""
    output = transformer(
        codes, condition_ids, labels=codes if soft_labels is None else None, soft_labels=soft_labels
    )
    logs = {"loss/codes": output.code_loss.detach()}
    if output.condition_loss is not None:
        logs["loss/text"] = output.condition_loss.detach()
    return output.loss, logs


def validation_conditions(args, conditioning: Conditioning, tokenizer) -> list[torch.LongTensor | None]:
    """One condition batch `(N, Lc)` per grid row (None: an unconditional row)."""
    count = args.num_validation_images
    if conditioning.kind == "class":
        labels = args.validation_labels or list(range(min(conditioning.num_classes, 10)))
        return [torch.full((count, 1), label, dtype=torch.long) for label in labels]
    if conditioning.kind == "text":
        prompts = args.validation_prompts or ["a photo"]
        ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=conditioning.length)[
            "input_ids"
        ]
        return [torch.tensor([row] * count, dtype=torch.long) for row in ids]
    return [None]


@torch.no_grad()
def sample_rows(transformer, vqvae: RQVAEModel, conditions: list, args, device) -> list[torch.Tensor]:
    """Generated images `(N, C, H, W)` in [-1, 1], one row per condition batch, seeded by `--seed`."""
    transformer.eval()
    generator = torch.Generator(device).manual_seed(args.seed)
    rows = []
    for condition in conditions:
        codes = transformer.generate(
            condition_ids=None if condition is None else condition.to(device),
            num_samples=args.num_validation_images if condition is None else None,
            guidance_scale=args.guidance_scale,
            generator=generator,
        )
        rows.append(vqvae.decode_codes(codes).sample.clamp(-1, 1))
    transformer.train()
    return rows


def model_card(
    pipeline: RQPipeline,
    *,
    title: str,
    dataset_description: str,
    repo_id: str | None = None,
    datasets: list[str] | None = None,
    metrics: list[Metric] | None = None,
    sections: str = "",
) -> ModelCard:
    """The pipeline's README: rq-hf's card for trained models (conditioning, architecture and sampling
    defaults read from the pipeline), `metrics` in its model-index, then the markdown `sections`."""
    transformer, vqvae = pipeline.transformer, pipeline.vqvae
    config, generation = transformer.config, transformer.generation_config
    null_id = config.null_condition_id
    if pipeline.tokenizer is not None:
        kind, condition = "text", f"{config.condition_sequence_length} caption tokens"
    elif config.is_conditional:
        kind = "class"
        condition = f"class id, {config.condition_vocab_size - (null_id is not None)} classes"
    else:
        kind, condition = "unconditional", "none"
    if null_id is not None:
        condition += f" (+ null id {null_id}: classifier-free guidance)"
    h, w, depth = config.code_shape
    card = make_model_card(
        None,
        repo_id=repo_id,
        conditioning=kind,
        title=title,
        datasets=datasets,
        dataset_description=dataset_description,
        sampling=SamplingDefaults(
            top_k=generation.top_k, top_p=generation.top_p, temperature=generation.temperature or 1.0
        ),
        extra_metrics=metrics,
        model_config_summary={
            "Image size": f"{vqvae.config.sample_size}x{vqvae.config.sample_size}",
            "Code map (h x w x D)": f"{h}x{w}x{depth}",
            "Codebook sizes": ", ".join(map(str, vqvae.codebook_sizes)),
            "RQ-VAE parameters": f"{sum(p.numel() for p in vqvae.parameters()) / 1e6:.2f}M",
            "RQ-Transformer parameters": f"{sum(p.numel() for p in transformer.parameters()) / 1e6:.2f}M",
            "Transformer width E": str(config.hidden_size),
            "Spatial / depth layers": f"{config.num_spatial_layers} / {config.num_depth_layers}",
            "Condition": condition,
        },
    )
    return ModelCard(card.content + sections)


def main(args: argparse.Namespace) -> RQPipeline:
    """Train; returns the trained pipeline (the transformer unwrapped; its EMA weights with --use_ema)."""
    check_arguments(args)
    accelerator = make_accelerator(args)  # also seeds every process alike: identical initial weights

    # Everything that can be wrong with the flags fails here, before the first step.
    vqvae = load_rqvae(args.vqvae, "--vqvae")
    resolution = args.resolution or vqvae.config.sample_size
    check_resolution(resolution, vqvae)
    vqvae.register_to_config(sample_size=resolution)
    vqvae.eval().requires_grad_(False).to(accelerator.device)
    dataset = load_training_dataset(
        args,
        {
            "--image_column": args.image_column,
            "--label_column": args.label_column,
            "--caption_column": args.caption_column,
        },
    )
    check_image_column(dataset, args.image_column)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    transformer, conditioning = build_transformer(args, vqvae, dataset, tokenizer)
    resume_dir, first_step = resume_checkpoint(args)

    transform = ImageTransform(resolution, vqvae.config.in_channels, args.center_crop, args.random_flip)
    if args.cache_codes:
        dataset = cache_codes(dataset, vqvae, transform, args, accelerator)
    cached = ("codes" if args.soft_label_temperature == 0 else "latents") if args.cache_codes else None
    training_tokenizer = with_bpe_dropout(tokenizer, args.bpe_dropout) if tokenizer is not None else None

    def prepare(row: dict, generator: torch.Generator) -> dict:
        example = (
            {cached: row[cached]}
            if cached
            else {"pixel_values": transform(row[args.image_column], generator)}
        )
        if args.label_column:
            example["condition_ids"] = torch.tensor([int(row[args.label_column])])
        elif args.caption_column:
            example["caption"] = row[args.caption_column]
        return example

    def collate(examples: list[dict]) -> dict:
        captions = [example.pop("caption") for example in examples] if args.caption_column else None
        batch = torch.utils.data.default_collate(examples)
        if captions is not None:
            batch["condition_ids"] = torch.tensor(
                training_tokenizer(
                    captions, padding="max_length", truncation=True, max_length=conditioning.length
                )["input_ids"]
            )
        return batch

    examples = make_examples(dataset, prepare, args.seed)
    if args.gradient_checkpointing:
        transformer.gradient_checkpointing_enable()
    dataloader = accelerator.prepare(make_dataloader(examples, args, collate))
    steps_per_epoch, max_train_steps = training_length(args, dataloader)
    optimizer = torch.optim.AdamW(
        transformer.parameters(),
        lr=args.learning_rate,
        eps=args.adam_epsilon,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    unwrapped = accelerator.unwrap_model(transformer)
    ema = None
    if args.use_ema:
        ema = EMAModel(unwrapped.parameters(), decay=args.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    register_pretrained_hooks(accelerator, {RQTransformerForImageGeneration: "transformer"})
    # From here on, different random streams per process (dropout, condition dropout, stochastic codes).
    restore_state(accelerator, args, resume_dir, first_step)
    start_run(accelerator, args, "train_rqtransformer")
    conditions = validation_conditions(args, conditioning, tokenizer)

    logger.info(
        f"{conditioning.kind} RQ-Transformer, {sum(p.numel() for p in unwrapped.parameters()) / 1e6:.2f}M "
        f"parameters, {accelerator.num_processes} processes x batch {args.train_batch_size} x accumulation "
        f"{args.gradient_accumulation_steps}, {max_train_steps} optimizer steps"
    )
    global_step = first_step
    progress = step_progress(accelerator, max_train_steps, first_step)
    transformer.train()
    for batch in training_batches(accelerator, dataloader, examples, steps_per_epoch, first_step):
        if global_step >= max_train_steps:
            break
        with accelerator.accumulate(transformer):
            codes, soft_labels = code_targets(
                vqvae, batch, args.soft_label_temperature, args.stochastic_codes
            )
            condition_ids = batch.get("condition_ids")
            if conditioning.null_id is not None:
                dropped = (
                    torch.rand(condition_ids.shape[0], device=condition_ids.device) < args.condition_dropout
                )
                condition_ids = condition_ids.masked_fill(dropped[:, None], conditioning.null_id)
            loss, logs = training_loss(transformer, codes, condition_ids, soft_labels)
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm:
                accelerator.clip_grad_norm_(transformer.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)

        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(unwrapped.parameters())
        global_step += 1
        progress.update(1)
        logs = {key: float(value) for key, value in logs.items()}
        logs["lr"] = lr_scheduler.get_last_lr()[0]
        progress.set_postfix({"loss": f"{float(loss.detach()):.4f}"})
        if global_step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args, global_step)
        if accelerator.is_main_process and (
            global_step % args.validation_steps == 0 or global_step == max_train_steps
        ):
            if ema is not None:
                ema.store(unwrapped.parameters())
                ema.copy_to(unwrapped.parameters())
            rows = sample_rows(unwrapped, vqvae, conditions, args, accelerator.device)
            if ema is not None:
                ema.restore(unwrapped.parameters())
            log_image(accelerator, args.output_dir, "samples", image_grid(rows), global_step)
        accelerator.log(logs, step=global_step)

    accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(unwrapped.parameters())
    pipeline = RQPipeline(vqvae=vqvae, transformer=unwrapped, tokenizer=tokenizer)
    if accelerator.is_main_process:
        hub_dataset = hub_dataset_id(args.dataset_name)
        command = "accelerate launch training/train_rqtransformer.py " + shlex.join(sys.argv[1:])
        card = model_card(
            pipeline,
            title=args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)),
            repo_id=args.hub_model_id,
            datasets=[hub_dataset] if hub_dataset else None,
            dataset_description=data_description(args),
            sections=f"\n## Training\n\n```bash\n{command}\n```\n",
        )
        pipeline.save_pretrained(args.output_dir, model_card=card)
        if args.push_to_hub:
            push_folder(args)
    accelerator.end_training()
    return pipeline


if __name__ == "__main__":
    run_script(main, parse_args)
