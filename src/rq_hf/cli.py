"""The ``rq-hf`` command line: ``generate``, ``reconstruct``, ``convert``, ``info``, ``evaluate``, ``stats``.

User mistakes (missing files, bad values, unknown releases) end with one line on stderr and exit status 2,
never a traceback. ``python -m rq_hf.cli`` and ``accelerate launch -m rq_hf.cli`` run the same as ``rq-hf``;
``evaluate`` and ``stats`` live in :mod:`rq_hf.cli_evaluate`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

#: The bundled class-conditional MNIST demo pipeline (trained with training/, see its model card).
DEFAULT_MODEL = files("rq_hf") / "demo" / "mnist"
DTYPES = ("float32", "bfloat16", "float16")


class UserError(Exception):
    """A mistake in the command's arguments or inputs, reported as one line."""


# -- loading --------------------------------------------------------------------------------------------------
def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_path(model: str | None) -> str:
    if model is not None:
        if not Path(model).exists() and (model.count("/") != 1 or model.startswith((".", "/", "~"))):
            raise UserError(
                f"--model: expected an existing folder or a Hub repo id (owner/name), got {model!r}"
            )
        return model
    if not (Path(str(DEFAULT_MODEL)) / "model_index.json").is_file():
        raise UserError(
            "--model: expected a pipeline folder or Hub repo id (no bundled demo model is installed)"
        )
    return str(DEFAULT_MODEL)


def load_pipeline(model: str | None, device: str = "cpu", dtype: str = "float32"):
    """An [`RQPipeline`] from a local folder or a Hub repo id, on ``device`` in ``dtype``."""
    from .pipeline_rq import RQPipeline

    path = _model_path(model)
    if Path(path).exists() and not (Path(path) / "model_index.json").is_file():
        raise UserError(f"--model: expected a pipeline folder with model_index.json, got {path}")
    try:
        pipeline = RQPipeline.from_pretrained(path, dtype=_torch_dtype(dtype))
    except OSError as error:
        raise UserError(
            f"--model: expected a pipeline folder or a reachable Hub repo id, got {path!r} ({error})"
        ) from error
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def load_vqvae(model: str | None, dtype: str = "float32"):
    """An [`RQVAEModel`] from a pipeline folder (its ``vqvae/``), an RQ-VAE folder, or a Hub repo id, in
    ``dtype`` (its codebooks stay float32)."""
    from .modeling_rqvae import RQVAEModel

    path = _model_path(model)
    folder = Path(path)
    subfolder = "vqvae" if (folder / "model_index.json").is_file() or not folder.exists() else None
    try:
        return RQVAEModel.from_pretrained(path, subfolder=subfolder, dtype=_torch_dtype(dtype)).eval()
    except OSError as error:
        raise UserError(
            f"--model: expected an RQ-VAE or pipeline folder or Hub repo id, got {path!r} ({error})"
        ) from error


def _one_or_list(values: list | None):
    return values[0] if values and len(values) == 1 else values


# -- commands -------------------------------------------------------------------------------------------------
def run_generate(args: argparse.Namespace) -> None:
    import torch

    from .image_grid import labelled_grid, save_image_atomically

    if (args.output is None) == (args.output_dir is None):
        raise UserError("--output, --output-dir: expected exactly one of them")
    pipeline = load_pipeline(args.model, args.device, args.dtype)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    images = pipeline(
        class_labels=args.labels,
        prompt=args.prompt,
        num_images_per_prompt=args.num_images,
        generator=generator,
        rerank_with=args.rerank_with,
        num_candidates=args.num_candidates,
        **sampling_options(pipeline, args),
    ).images
    names = [str(label) for label in args.labels] if args.labels else args.prompt or ["sample"]
    rows = [images[i * args.num_images : (i + 1) * args.num_images] for i in range(len(names))]
    if args.output_dir is not None:
        for name, row in zip(names, rows, strict=True):
            for index, image in enumerate(row):
                slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
                save_image_atomically(image, Path(args.output_dir) / f"{slug}_{index:03d}.png")
        print(f"Wrote {len(images)} images to {args.output_dir}")
    else:
        save_image_atomically(labelled_grid(rows, names), args.output)
        print(f"Wrote {args.output} ({len(images)} images)")


def image_to_tensor(image, size: int, channels: int):
    """A PIL image as the RQ-VAE takes it: float (channels, size, size) in [-1, 1], converted to RGB (3) or
    grey (1), scaled so its shorter side is ``size`` (bicubic) and center-cropped (``ImageOps.fit``)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    image = ImageOps.fit(image.convert("RGB" if channels == 3 else "L"), (size, size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array.reshape(size, size, channels)).permute(2, 0, 1)


def _load_image(path: str, size: int, channels: int):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise UserError(
            f"IMAGE: expected a readable image file, got {path!r} ({type(error).__name__})"
        ) from error
    return image_to_tensor(image, size, channels)


def run_reconstruct(args: argparse.Namespace) -> None:
    import torch
    from PIL import Image

    from .evaluation.reconstruction import psnr
    from .image_grid import labelled_grid, save_image_atomically
    from .modeling_rqvae import checked_pixels

    vqvae = load_vqvae(args.model)
    size, depth = vqvae.config.sample_size, vqvae.config.num_quantizers
    images = torch.stack([_load_image(path, size, vqvae.config.in_channels) for path in args.images])
    with torch.no_grad():
        codes = vqvae.encode(images).codes
        decoded = [checked_pixels(vqvae.decode_codes(codes, depth=d).sample) for d in range(1, depth + 1)]

    def to_pil(batch: torch.Tensor) -> list:
        array = ((batch + 1) * 127.5).round().byte().permute(0, 2, 3, 1).squeeze(-1).numpy()
        return [Image.fromarray(item) for item in array]

    columns = [to_pil(images)] + [to_pil(batch) for batch in decoded]
    rows = [[column[i] for column in columns] for i in range(len(args.images))]
    grid = labelled_grid(
        rows, [Path(p).stem for p in args.images], ["input"] + [f"d<={d}" for d in range(1, depth + 1)]
    )
    save_image_atomically(grid, args.output)
    print("PSNR (dB) of the decode of depths 1..d")
    print("| image | " + " | ".join(f"d<={d}" for d in range(1, depth + 1)) + " |")
    print("|---|" + "---|" * depth)
    scores = [psnr((images + 1) / 2, (batch + 1) / 2) for batch in decoded]
    for i, path in enumerate(args.images):
        print(f"| {Path(path).name} | " + " | ".join(f"{score[i].item():.2f}" for score in scores) + " |")
    print(f"Wrote {args.output}")


def run_convert(args: argparse.Namespace) -> None:
    from .conversion import convert_original_checkpoint

    path = convert_original_checkpoint(
        args.checkpoint_dir,
        args.output_dir,
        use_ema=args.use_ema,
        overwrite=args.overwrite,
        release=args.release,
        tokenizer_dir=args.tokenizer_dir,
        push_to_hub=args.push_to_hub,
    )
    print(f"Wrote {path}")


def _parameters(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def run_info(args: argparse.Namespace) -> None:
    pipeline = load_pipeline(args.model)
    vqvae, transformer = pipeline.vqvae, pipeline.transformer
    config, generation = transformer.config, transformer.generation_config
    size = vqvae.config.sample_size
    lines = [
        f"model: {args.model}",
        f"vqvae: RQVAEModel, {_parameters(vqvae)} parameters, images {vqvae.config.in_channels}x{size}x{size}, "
        f"codes {tuple(vqvae.code_shape)} (h, w, D), codebook sizes {vqvae.codebook_sizes}"
        f"{' (shared)' if vqvae.config.shared_codebook else ''}",
        f"transformer: RQTransformerForImageGeneration, {_parameters(transformer)} parameters, width "
        f"{config.hidden_size}, {config.num_spatial_layers} spatial + {config.num_depth_layers} depth layers",
        f"condition: {config.condition_vocab_size} ids x {config.condition_sequence_length} tokens, null "
        f"condition id {config.null_condition_id}",
        f"tokenizer: {type(pipeline.tokenizer).__name__ if pipeline.tokenizer is not None else 'none'}",
        f"sampling defaults: temperature {generation.temperature}, top_k {generation.top_k}, top_p {generation.top_p}",
    ]
    print("\n".join(lines))


# -- parser ---------------------------------------------------------------------------------------------------
def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint_dir",
        "--checkpoint-dir",
        required=True,
        help="original release folder (stage1/, stage2/) or a stage-1 folder (config.yaml, model.pt)",
    )
    parser.add_argument(
        "--output_dir", "--output-dir", required=True, help="folder to write (missing or empty)"
    )
    parser.add_argument("--use_ema", "--use-ema", action="store_true", help="convert state_dict_ema")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    parser.add_argument("--release", help="original release whose model card to write (see rq_hf.releases)")
    parser.add_argument(
        "--tokenizer_dir", "--tokenizer-dir", help="caption tokenizer of a text-to-image release"
    )
    parser.add_argument(
        "--push_to_hub", "--push-to-hub", metavar="REPO_ID", help="upload the folder to this repo"
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """`--top-k --top-p --temperature --guidance-scale` (unset ones take the model's generation config) and the
    speed options `--compile --fuse-qkv`."""
    parser.add_argument("--top-k", nargs="+", type=int, help="one value or one per depth")
    parser.add_argument("--top-p", nargs="+", type=float, help="one value or one per depth")
    parser.add_argument("--temperature", type=float)
    parser.add_argument(
        "--guidance-scale", type=float, help="default: the model's generation config (no guidance)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the decoding step (torch.compile: CUDA graphs on GPU, autotuned GEMMs on CPU): faster "
        "after a slow first batch (a minute or two on CPU)",
    )
    parser.add_argument(
        "--fuse-qkv", action="store_true", help="one query/key/value product per attention layer"
    )


def sampling_options(pipeline, args: argparse.Namespace) -> dict:
    """Apply `--fuse-qkv` to the pipeline; return the pipeline's sampling keyword arguments from the flags."""
    if args.fuse_qkv:
        pipeline.fuse_qkv_projections()
    return {
        "temperature": args.temperature,
        "top_k": _one_or_list(args.top_k),
        "top_p": _one_or_list(args.top_p),
        "guidance_scale": args.guidance_scale,
        "compile": args.compile,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rq-hf", description="RQ-VAE / RQ-Transformer image generation tools."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate images with an RQPipeline")
    generate.add_argument("--model", help="pipeline folder or Hub repo id (default: the bundled MNIST demo)")
    condition = generate.add_mutually_exclusive_group()
    condition.add_argument("--labels", nargs="+", type=int, help="class ids (class-conditional models)")
    condition.add_argument("--prompt", nargs="+", help="captions (text-to-image models)")
    generate.add_argument("--num-images", type=_positive_int, default=1, help="images per label / prompt")
    generate.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(generate)
    generate.add_argument(
        "--rerank-with", help="CLIP model id or path: keep the best of --num-candidates per prompt"
    )
    generate.add_argument(
        "--num-candidates", type=_positive_int, help="candidates per prompt for --rerank-with"
    )
    generate.add_argument("--device", default=_default_device())
    generate.add_argument("--dtype", choices=DTYPES, default="float32")
    generate.add_argument("--output", help="PNG grid, one row per label / prompt")
    generate.add_argument("--output-dir", help="one PNG per image instead of a grid")
    generate.set_defaults(handler=run_generate)

    reconstruct = commands.add_parser(
        "reconstruct", help="coarse-to-fine reconstructions (decode of depths 1..D)"
    )
    reconstruct.add_argument("images", nargs="+", metavar="IMAGE")
    reconstruct.add_argument(
        "--model", help="pipeline or RQ-VAE folder or Hub repo id (default: the MNIST demo)"
    )
    reconstruct.add_argument("--output", required=True, help="PNG grid: input, then depths 1..D")
    reconstruct.set_defaults(handler=run_reconstruct)

    convert = commands.add_parser("convert", help="convert an original release to Hugging Face folders")
    add_convert_arguments(convert)
    convert.set_defaults(handler=run_convert)

    info = commands.add_parser("info", help="components, shapes, parameter counts and sampling defaults")
    info.add_argument("model", metavar="PATH_OR_REPO")
    info.set_defaults(handler=run_info)

    from .cli_evaluate import add_evaluate_parsers

    add_evaluate_parsers(commands)
    return parser


def _quiet_libraries() -> None:
    """No loading progress bars of diffusers/transformers on the command line (its own output is enough)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.handler(args)
    except (UserError, ValueError, TypeError, FileNotFoundError, FloatingPointError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"rq-hf {getattr(args, 'command_name', args.command)}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run the imported module's main, so that `rq_hf.cli_evaluate` and this entry point share one `UserError`.
    from rq_hf.cli import main as package_main

    sys.exit(package_main())
