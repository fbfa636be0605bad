#!/usr/bin/env python
"""Train an RQ-VAE (stage 1 of Lee et al., CVPR 2022) on a `datasets` source with Accelerate.

    accelerate launch training/train_rqvae.py --model_config training/configs/rqvae-mnist.json \\
        --dataset_name parquet --train_data_files mnist.parquet --output_dir rqvae-mnist

The original recipe: MSE reconstruction + commitment (the config's `commitment_weight`, 0.25) + LPIPS
(`--perceptual_weight`, 1.0) + a PatchGAN hinge loss weighted by `--disc_weight` (0.75) times VQGAN's adaptive
weight from `--disc_start` on; Adam lr 4e-5, betas (0.5, 0.9) for both networks. The codebooks learn by EMA
inside the model (one step per forward, all-reduced over the processes, dead codes restarted from rank 0's
batch). The result is a `save_pretrained` folder in `--output_dir` (also inside every checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import sys

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
    code_counts,
    codebook_logs,
    data_description,
    flag_error,
    hub_dataset_id,
    image_grid,
    load_rqvae,
    load_training_dataset,
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
from discriminator import PatchGANDiscriminator, adaptive_gan_weight, generator_loss, hinge_discriminator_loss
from huggingface_hub import ModelCard, ModelCardData
from torch.nn import functional as F

from rq_hf import RQVAEModel
from rq_hf.evaluation import psnr

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_argument_group("model")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_config", help="RQVAEModel config JSON (training/configs/rqvae-*.json)")
    source.add_argument("--pretrained_model", help="RQ-VAE folder, pipeline folder or Hub repo to fine-tune")
    losses = parser.add_argument_group("losses")
    losses.add_argument(
        "--perceptual_weight",
        type=float,
        default=1.0,
        help="LPIPS (VGG) weight; needs the lpips package; 0 turns it off",
    )
    losses.add_argument("--disc_weight", type=float, default=0.75, help="GAN loss weight (0: no GAN loss)")
    losses.add_argument(
        "--disc_start", type=int, default=0, help="optimizer step at which the GAN loss starts"
    )
    losses.add_argument("--disc_layers", type=int, default=2, help="PatchGAN stride-2 layers")
    losses.add_argument("--disc_channels", type=int, default=64, help="PatchGAN first-layer filters (ndf)")
    add_data_arguments(parser)
    add_optimization_arguments(
        parser,
        learning_rate=4e-5,
        adam_beta1=0.5,
        adam_beta2=0.9,
        adam_weight_decay=0.0,
        lr_scheduler="constant",
        max_grad_norm=0.0,
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--num_validation_images",
        type=int,
        default=8,
        help="images of the training data reconstructed at every validation",
    )
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    """Flag checks that need no data and no model."""
    check_common_arguments(args)
    for flag in ("perceptual_weight", "disc_weight"):
        if getattr(args, flag) < 0:
            raise flag_error(f"--{flag}", "a float >= 0", getattr(args, flag))
    for flag, minimum in (
        ("disc_start", 0),
        ("disc_layers", 1),
        ("disc_channels", 1),
        ("num_validation_images", 1),
    ):
        if getattr(args, flag) < minimum:
            raise flag_error(f"--{flag}", f"an int >= {minimum}", getattr(args, flag))


def build_model(args: argparse.Namespace) -> RQVAEModel:
    """The RQ-VAE from `--model_config` or `--pretrained_model`, its `sample_size` set to the training
    resolution (`--resolution`, default the config's)."""
    if args.pretrained_model is not None:
        model = load_rqvae(args.pretrained_model, "--pretrained_model")
    else:
        try:
            with open(args.model_config, encoding="utf-8") as file:
                config = json.load(file)
            model = RQVAEModel.from_config(config)
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as error:
            raise flag_error(
                "--model_config", "an RQVAEModel config JSON file", f"{args.model_config} ({error})"
            ) from error
    resolution = args.resolution or model.config.sample_size
    check_resolution(resolution, model)
    model.register_to_config(sample_size=resolution)
    return model


def load_perceptual_loss(weight: float) -> torch.nn.Module | None:
    """LPIPS with a VGG16 backbone (frozen), or None when `weight` is 0."""
    if weight == 0:
        return None
    advice = "install lpips (brings torchvision) or pass --perceptual_weight 0"
    try:
        import lpips
    except ImportError as error:
        raise flag_error("--perceptual_weight", f"0 without the lpips package ({advice})", weight) from error
    try:
        loss = lpips.LPIPS(net="vgg", verbose=False)
    except Exception as error:  # torchvision's weight download fails with URLError, RuntimeError, ...
        raise flag_error(
            "--perceptual_weight",
            f"0 when LPIPS's VGG16 weights cannot be loaded ({advice})",
            f"{weight} ({type(error).__name__}: {error})",
        ) from error
    return loss.eval().requires_grad_(False)


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """No parameter gradients for `module` inside the block (gradients still flow through it)."""
    flags = [parameter.requires_grad for parameter in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, flag in zip(module.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)


@torch.no_grad()
def validate(vqvae: RQVAEModel, images: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Reconstructions of `images` from depths 1..D (grid rows: originals, then each depth) and their PSNR."""
    vqvae.eval()
    codes = vqvae.encode(images).codes
    rows, logs = [images], {}
    for depth in range(1, vqvae.config.num_quantizers + 1):
        reconstruction = vqvae.decode_codes(codes, depth=depth).sample.clamp(-1, 1)
        rows.append(reconstruction)
        logs[f"validation/psnr_depth{depth}"] = float(psnr((images + 1) / 2, (reconstruction + 1) / 2).mean())
    vqvae.train()
    return rows, logs


def model_card(args: argparse.Namespace, vqvae: RQVAEModel, metrics: dict[str, float]) -> ModelCard:
    """The README of the trained RQ-VAE: what it is, how to load it, its training command and validation."""
    repo_id = args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))
    hub_dataset = hub_dataset_id(args.dataset_name)
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="rq_hf",
        datasets=[hub_dataset] if hub_dataset else None,
        tags=["rq-vae", "residual-quantization", "image-tokenizer", "arxiv:2203.01941"],
    )
    size, channels = vqvae.config.sample_size, vqvae.config.in_channels
    command = "accelerate launch training/train_rqvae.py " + shlex.join(sys.argv[1:])
    rows = "".join(f"| {key} | {value:.4g} |\n" for key, value in metrics.items())
    return ModelCard(
        f"---\n{card_data.to_yaml()}\n---\n\n# {repo_id}\n\n"
        "An RQ-VAE (residual-quantized VAE, Lee et al., CVPR 2022, "
        "[arXiv 2203.01941](https://arxiv.org/abs/2203.01941)) trained with rq-hf's "
        "`training/train_rqvae.py`: "
        f"it turns a {size}x{size} image into a {'x'.join(map(str, vqvae.code_shape))} stack of codes "
        f"(codebook sizes {vqvae.codebook_sizes}) and back.\n\n"
        f'```python\nfrom rq_hf import RQVAEModel\n\nvqvae = RQVAEModel.from_pretrained("{repo_id}")\n'
        f"codes = vqvae.encode(images).codes  # images (B, {channels}, H, W) in [-1, 1]\n"
        "reconstruction = vqvae.decode_codes(codes).sample\n```\n\n"
        f"## Training\n\nData: {data_description(args)}.\n\n"
        f"```bash\n{command}\n```\n\n"
        "## Validation\n\nLast validation of the run (PSNR on the first training images, codebook use of the "
        f"training codes since the previous validation):\n\n| metric | value |\n|---|---|\n{rows}"
    )


def main(args: argparse.Namespace) -> RQVAEModel:
    """Train; returns the trained RQ-VAE (unwrapped; identical on every process)."""
    check_arguments(args)
    accelerator = make_accelerator(args)  # also seeds every process alike: identical initial weights

    # Everything that can be wrong with the flags fails here, before the first step.
    model = build_model(args)
    dataset = load_training_dataset(args, {"--image_column": args.image_column})
    check_image_column(dataset, args.image_column)
    perceptual = load_perceptual_loss(args.perceptual_weight)
    resume_dir, first_step = resume_checkpoint(args)

    transform = ImageTransform(
        model.config.sample_size, model.config.in_channels, args.center_crop, args.random_flip
    )
    examples = make_examples(
        dataset,
        lambda row, generator: {"pixel_values": transform(row[args.image_column], generator)},
        args.seed,
    )
    first_rows = itertools.islice(iter(dataset), args.num_validation_images)
    validation_images = torch.stack([transform(row[args.image_column]) for row in first_rows])
    use_gan = args.disc_weight > 0
    discriminator = PatchGANDiscriminator(model.config.out_channels, args.disc_channels, args.disc_layers)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()

    dataloader = accelerator.prepare(make_dataloader(examples, args))
    steps_per_epoch, max_train_steps = training_length(args, dataloader)

    def optimizer_and_scheduler(parameters, num_steps: int):
        optimizer = torch.optim.AdamW(
            parameters,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay,
            eps=args.adam_epsilon,
        )
        scheduler = get_scheduler(
            args.lr_scheduler,
            optimizer,
            num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=max(num_steps, 1) * accelerator.num_processes,
        )
        return optimizer, scheduler

    optimizer, lr_scheduler = optimizer_and_scheduler(model.parameters(), max_train_steps)
    disc_optimizer, disc_scheduler = optimizer_and_scheduler(
        discriminator.parameters(), max_train_steps - args.disc_start
    )
    model, discriminator, optimizer, lr_scheduler, disc_optimizer, disc_scheduler = accelerator.prepare(
        model, discriminator, optimizer, lr_scheduler, disc_optimizer, disc_scheduler
    )
    if perceptual is not None:
        perceptual.to(accelerator.device)
    register_pretrained_hooks(accelerator, {RQVAEModel: "vqvae"})
    vqvae = accelerator.unwrap_model(model)
    disc_module = accelerator.unwrap_model(discriminator)
    # Different random streams per process (dead-code restarts draw on rank 0 only, as the model broadcasts).
    restore_state(accelerator, args, resume_dir, first_step)
    start_run(accelerator, args, "train_rqvae")

    logger.info(
        f"{len(dataset) if not args.streaming else 'streamed'} examples, {accelerator.num_processes} "
        f"processes x batch {args.train_batch_size} x accumulation {args.gradient_accumulation_steps}, "
        f"{max_train_steps} optimizer steps"
    )
    global_step = first_step
    progress = step_progress(accelerator, max_train_steps, first_step)
    counts = [torch.zeros(size, dtype=torch.long, device=accelerator.device) for size in vqvae.codebook_sizes]
    validation_logs: dict[str, float] = {}
    model.train()
    discriminator.train()
    for batch in training_batches(accelerator, dataloader, examples, steps_per_epoch, first_step):
        if global_step >= max_train_steps:
            break
        gan_active = use_gan and global_step >= args.disc_start
        with accelerator.accumulate(model, discriminator):
            images = batch["pixel_values"]
            output = model(images)
            reconstruction = output.sample
            recon_loss = F.mse_loss(reconstruction.float(), images.float())
            logs = {
                "loss/reconstruction": recon_loss.detach(),
                "loss/commitment": output.commitment_loss.detach(),
            }
            nll = recon_loss
            if perceptual is not None:
                with accelerator.autocast():
                    perceptual_loss = perceptual(images, reconstruction).float().mean()
                nll = nll + args.perceptual_weight * perceptual_loss
                logs["loss/perceptual"] = perceptual_loss.detach()
            loss = nll + vqvae.config.commitment_weight * output.commitment_loss
            if gan_active:
                with frozen(disc_module):  # the generator's GAN term moves the RQ-VAE only
                    logits_fake, _ = disc_module(reconstruction)
                gan_loss = generator_loss(logits_fake)
                gan_weight = adaptive_gan_weight(nll, gan_loss, vqvae.decoder.conv_out.weight)
                loss = loss + gan_weight * args.disc_weight * gan_loss
                logs.update({"loss/generator": gan_loss.detach(), "gan/adaptive_weight": gan_weight})
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            if gan_active:
                logits_fake, logits_real = discriminator(reconstruction.detach(), images)
                disc_loss = hinge_discriminator_loss(logits_real, logits_fake)
                accelerator.backward(args.disc_weight * disc_loss)
                disc_optimizer.step()
                disc_scheduler.step()
                disc_optimizer.zero_grad(set_to_none=True)
                logs.update(
                    {
                        "loss/discriminator": disc_loss.detach(),
                        "gan/logits_real": logits_real.detach().mean(),
                        "gan/logits_fake": logits_fake.detach().mean(),
                    }
                )
            for count, new in zip(counts, code_counts(output.codes, vqvae.codebook_sizes), strict=True):
                count += new

        if not accelerator.sync_gradients:
            continue
        global_step += 1
        progress.update(1)
        logs = {key: float(value) for key, value in logs.items()}
        logs["lr"] = lr_scheduler.get_last_lr()[0]
        progress.set_postfix({"mse": f"{logs['loss/reconstruction']:.4f}"})
        if global_step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args, global_step)
        if global_step % args.validation_steps == 0 or global_step == max_train_steps:
            totals = [accelerator.reduce(count, "sum") for count in counts]
            if accelerator.is_main_process:
                rows, validation_logs = validate(vqvae, validation_images.to(accelerator.device))
                validation_logs.update(codebook_logs(totals, "codebook"))
                log_image(accelerator, args.output_dir, "reconstruction", image_grid(rows), global_step)
                logs.update(validation_logs)
            for count in counts:
                count.zero_()
        accelerator.log(logs, step=global_step)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        vqvae.save_pretrained(args.output_dir)
        model_card(args, vqvae, validation_logs).save(os.path.join(args.output_dir, "README.md"))
        if args.push_to_hub:
            push_folder(args)
    accelerator.end_training()
    return vqvae


if __name__ == "__main__":
    run_script(main, parse_args)
