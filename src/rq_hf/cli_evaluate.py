"""``rq-hf evaluate reconstruction``, ``rq-hf evaluate generation`` and ``rq-hf stats``.

The command-line front end of :mod:`rq_hf.evaluation`: rFID / PSNR / SSIM / LPIPS / codebook usage of an
RQ-VAE on a ``datasets`` source, FID / Inception Score / CLIP score of generated samples, and FID reference
statistics (``.npz`` with ``mu`` and ``sigma``, the original release's layout). Every metric is computed by
the library; this module loads models and data, shards the work and reports.

Images handed to the feature extractor: float32 (B, 3, H, W) in [0, 1] on its device (greyscale data and
1-channel models are repeated to 3 channels). Data-set images are converted and resized like
``rq-hf reconstruct`` does (RGB or grey as the model takes them, shorter side to the resolution, bicubic,
center crop).

Sharding: ``accelerate launch [--multi_gpu] --num_processes P -m rq_hf.cli evaluate ...`` runs P processes.
Process r takes the contiguous share ``[r N // P, (r + 1) N // P)`` of the N data-set rows or samples (no
padding, no duplicates) and generates with seed ``--seed + r``; the sums behind every number (feature means
and covariances, PSNR / SSIM / LPIPS / CLIP means, code counts) are reduced across processes once, and the
Inception-Score logits gathered once, at the end; only process 0 prints and writes files. Data-set numbers
(stats, reconstruction) do not depend on P beyond float64 summation order; generated samples do (one seed per
process).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .cli import DTYPES, UserError, add_sampling_arguments, load_pipeline, load_vqvae, sampling_options
from .cli_inputs import (
    Processes,
    check_batch_size,
    check_output,
    dataset_batches,
    flag_error,
    join_processes,
    load_extractor,
    load_image_dataset,
    num_features_of,
    num_samples_to_use,
    sum_across_processes,
    unit_rgb,
)
from .modeling_rqvae import checked_pixels

INCEPTION_SCORE_SPLITS = 10


def inception_score_splits(num_samples: int) -> int:
    """Splits of the Inception Score: 10 (the paper's) from 100 samples on, else one per 10 samples (>= 1)."""
    return max(1, min(INCEPTION_SCORE_SPLITS, num_samples // 10))


# -- outputs --------------------------------------------------------------------------------------------------
def _report(results: dict, rows: Sequence[tuple[str, str]], output: str | None, processes: Processes) -> None:
    """Print ``rows`` as a table with the notes (process 0 only) and write ``results`` as JSON, atomically."""
    from .evaluation._checks import atomic_write

    if not processes.is_main:
        return
    print(
        f"rq-hf {results['command']}: {results['num_samples']} images, {results['num_processes']} process(es)"
    )
    print("| metric | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    for note in results["notes"]:
        print(f"note: {note}")
    if output is not None:
        text = json.dumps(results, indent=2) + "\n"
        atomic_write(Path(output).expanduser(), lambda file: file.write(text.encode()))
        print(f"Wrote {output}")


def _common_results(command: str, args: argparse.Namespace, processes: Processes, num_samples: int) -> dict:
    return {
        "command": command,
        "num_samples": num_samples,
        "num_processes": processes.count,
        "feature_extractor": args.feature_extractor or "inception-v3-fid",
        "notes": [],
    }


def _dataset_statistics(dataset, args: argparse.Namespace, total: int, size: int, extractor, processes):
    """Feature statistics of the first ``total`` rows, each process its share, gathered once."""
    from .evaluation import compute_statistics

    batches = dataset_batches(
        dataset,
        processes.share(total),
        args.image_column,
        size,
        3,
        args.batch_size,
        "reference",
        processes.is_main,
    )
    return compute_statistics(
        (unit_rgb(batch, processes.device) for batch in batches), extractor, name="--dataset"
    )


# -- commands -------------------------------------------------------------------------------------------------
def run_stats(args: argparse.Namespace) -> None:
    from .evaluation import save_statistics

    check_output(args.output, "--output")
    check_output(args.json, "--json")
    check_batch_size(args.batch_size)
    if args.resolution < 1:
        raise UserError(f"--resolution: expected an int >= 1, got {args.resolution}")
    processes = join_processes(args.device)
    dataset = load_image_dataset(args.dataset, args.split, args.image_column)
    total = num_samples_to_use(len(dataset), args.num_samples, processes)
    extractor, _ = load_extractor(args, processes.device)
    num_features = num_features_of(extractor, args.resolution, processes.device)
    statistics = _dataset_statistics(dataset, args, total, args.resolution, extractor, processes)
    results = _common_results("stats", args, processes, total)
    results.update(
        dataset=args.dataset,
        split=args.split,
        resolution=args.resolution,
        num_features=num_features,
        statistics=str(args.output),
        trace_sigma=float(statistics.sigma.trace()),
    )
    if processes.is_main:
        save_statistics(statistics, Path(args.output).expanduser())
    rows = [
        ("dataset", f"{args.dataset} ({args.split or 'its only split'})"),
        ("images", str(total)),
        ("resolution", f"{args.resolution}x{args.resolution}"),
        ("features", str(num_features)),
        ("trace(sigma)", f"{results['trace_sigma']:.4f}"),
        ("statistics", f"{args.output} (mu, sigma, num_samples)"),
    ]
    _report(results, rows, args.json, processes)


def run_evaluate_reconstruction(args: argparse.Namespace) -> None:
    import importlib.util

    from .evaluation import codebook_perplexity, codebook_usage, plot_codebook_usage, reconstruction_metrics

    check_output(args.output, "--output")
    check_output(args.codebook_figure, "--codebook-figure")
    check_batch_size(args.batch_size)
    processes = join_processes(args.device)
    vqvae = load_vqvae(args.model, args.dtype).to(processes.device)
    size, channels, sizes = vqvae.config.sample_size, vqvae.config.in_channels, list(vqvae.codebook_sizes)
    dataset = load_image_dataset(args.dataset, args.split, args.image_column)
    total = num_samples_to_use(len(dataset), args.num_samples, processes)
    extractor, _ = load_extractor(args, processes.device)
    num_features_of(extractor, size, processes.device)
    results = _common_results("evaluate reconstruction", args, processes, total)
    with_lpips = not args.no_lpips and importlib.util.find_spec("torchvision") is not None
    if not with_lpips:
        results["notes"].append(
            "LPIPS skipped: "
            + ("--no-lpips" if args.no_lpips else "it needs torchvision (torchmetrics' backbone)")
        )
    counts = torch.zeros(sum(sizes), dtype=torch.int64)

    def pairs() -> Iterator[tuple[Tensor, Tensor]]:
        nonlocal counts
        batches = dataset_batches(
            dataset,
            processes.share(total),
            args.image_column,
            size,
            channels,
            args.batch_size,
            "reconstruct",
            processes.is_main,
        )
        for batch in batches:
            with torch.no_grad():
                codes = vqvae.encode(batch.to(processes.device, vqvae.dtype)).codes
                decoded = checked_pixels(vqvae.decode_codes(codes).sample.float())
            counts += torch.cat(codebook_usage(codes, sizes))
            yield unit_rgb(batch, processes.device), unit_rgb(decoded, processes.device)

    first, second = itertools.tee(pairs())
    metrics = reconstruction_metrics(
        (original for original, _ in first),
        (reconstruction for _, reconstruction in second),
        feature_extractor=extractor,
        with_lpips=with_lpips,
    )
    usage = list(sum_across_processes(counts.to(processes.device)).cpu().split(sizes))
    perplexities = codebook_perplexity(usage)
    results.update(
        model=args.model or "bundled MNIST demo",
        dataset=args.dataset,
        split=args.split,
        dtype=args.dtype,
        metrics=metrics,
        codebook=[
            {
                "depth": depth,
                "codebook_size": len(counts_d),
                "used_codes": int((counts_d > 0).sum()),
                "perplexity": perplexity,
            }
            for depth, (counts_d, perplexity) in enumerate(zip(usage, perplexities, strict=True), 1)
        ],
    )
    if processes.is_main and args.codebook_figure:
        title = f"codebook usage on {Path(args.dataset).name} ({total} images)"
        plot_codebook_usage(usage, Path(args.codebook_figure).expanduser(), title=title)
        results["codebook_figure"] = str(args.codebook_figure)
    rows = [
        ("rFID", f"{metrics['rfid']:.4f}"),
        ("PSNR (dB)", f"{metrics['psnr']:.4f}"),
        ("SSIM", f"{metrics['ssim']:.4f}"),
    ]
    rows += [("LPIPS", f"{metrics['lpips']:.4f}")] if with_lpips else []
    rows += [
        (
            f"codes depth {entry['depth']}",
            f"perplexity {entry['perplexity']:.2f}, {entry['used_codes']}/{entry['codebook_size']} used",
        )
        for entry in results["codebook"]
    ]
    _report(results, rows, args.output, processes)


def _conditions(args: argparse.Namespace, pipeline) -> tuple[str, list]:
    """("class", labels) / ("text", prompts) / ("none", []): the condition of sample i is ``values[i % len]``."""
    config = pipeline.transformer.config
    if pipeline.tokenizer is not None:
        if args.labels is not None:
            raise UserError(
                "--labels: expected none for a text-to-image model (use --prompts-file), got labels"
            )
        if args.prompts_file is None:
            raise UserError(
                "--prompts-file: expected a file of captions (one per line) for a text-to-image model"
            )
        try:
            prompts = [
                line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()
            ]
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(
                f"--prompts-file: expected a readable text file, got {args.prompts_file!r} ({error})"
            ) from error
        if not prompts:
            raise UserError(
                f"--prompts-file: expected at least one caption, got an empty file {args.prompts_file!r}"
            )
        return "text", prompts
    if args.prompts_file is not None:
        raise UserError("--prompts-file: expected none for a model without a tokenizer, got a file")
    if not config.is_conditional:
        if args.labels is not None:
            raise UserError("--labels: expected none for an unconditional model, got labels")
        return "none", []
    classes = [label for label in range(config.condition_vocab_size) if label != config.null_condition_id]
    if args.labels is None or args.labels == ["uniform"]:
        return "class", classes
    try:
        labels = [int(label) for label in args.labels]
    except ValueError:
        raise UserError(f"--labels: expected 'uniform' or class ids, got {' '.join(args.labels)}") from None
    bad = [label for label in labels if label not in classes]
    if bad:
        raise UserError(f"--labels: expected class ids in [0, {len(classes)}), got {bad}")
    return "class", labels


def _reference_statistics(args, processes, size: int, num_features: int, extractor):
    """The FID reference: ``--reference-stats`` (checked against the extractor's F) or ``--dataset``'s."""
    from .evaluation import load_statistics

    if args.reference_stats is not None:
        try:
            statistics = load_statistics(args.reference_stats)
        except (ValueError, TypeError) as error:
            raise flag_error(error, "--reference-stats") from error
        if statistics.num_features != num_features:
            raise UserError(
                f"--reference-stats: expected statistics of {num_features} features (the feature extractor's), "
                f"got {statistics.num_features} (made with another extractor?)"
            )
        return statistics, f"{args.reference_stats}"
    dataset = load_image_dataset(args.dataset, args.split, args.image_column)
    total = num_samples_to_use(len(dataset), args.reference_num_samples, processes, "--reference-num-samples")
    statistics = _dataset_statistics(dataset, args, total, size, extractor, processes)
    return statistics, f"{args.dataset} ({args.split or 'its only split'}, {total} images at {size}x{size})"


def run_evaluate_generation(args: argparse.Namespace) -> None:
    from accelerate.utils import gather_object
    from torchmetrics import MeanMetric

    from .clip_reranking import load_clip
    from .evaluation import FeatureStatisticsMetric, clip_score, frechet_distance, inception_score
    from .evaluation._checks import run_extractor

    check_output(args.output, "--output")
    check_batch_size(args.batch_size)
    if (args.reference_stats is None) == (args.dataset is None):
        raise UserError("--reference-stats, --dataset: expected exactly one of them (the FID reference)")
    processes = join_processes(args.device)
    total = num_samples_to_use(args.num_samples, args.num_samples, processes)
    pipeline = load_pipeline(args.model, str(processes.device), args.dtype)
    kind, conditions = _conditions(args, pipeline)
    size = pipeline.vqvae.config.sample_size
    extractor, head = load_extractor(args, processes.device)
    num_features = num_features_of(extractor, size, processes.device)
    reference, reference_name = _reference_statistics(args, processes, size, num_features, extractor)
    results = _common_results("evaluate generation", args, processes, total)
    clip = None
    if kind == "text" and args.clip_model is not None:
        try:
            model, processor = load_clip(args.clip_model)
        except OSError as error:
            raise UserError(
                f"--clip-model: expected a CLIP model folder or Hub id, got {args.clip_model!r} ({error})"
            ) from error
        clip = (model.to(processes.device), processor)
    elif kind == "text":
        results["notes"].append("CLIP score skipped: pass --clip-model (e.g. openai/clip-vit-base-patch32)")
    elif args.clip_model is not None:
        raise UserError("--clip-model: expected none for a model without prompts, got a CLIP model")
    if head is None:
        results["notes"].append("Inception Score skipped: the feature extractor has no classifier head")

    from tqdm.auto import tqdm

    statistics = FeatureStatisticsMetric(num_features).to(processes.device)
    clip_mean = MeanMetric().set_dtype(torch.float64).to(processes.device)
    logits = []
    generator = torch.Generator(processes.device).manual_seed(args.seed + processes.index)
    sampling = sampling_options(pipeline, args)
    share = processes.share(total)
    with tqdm(total=len(share), desc="generate", unit="img", disable=not processes.is_main) as progress:
        for start in range(share.start, share.stop, args.batch_size):
            indices = range(start, min(start + args.batch_size, share.stop))
            chosen = [conditions[index % len(conditions)] for index in indices] if conditions else None
            images = (
                pipeline(
                    class_labels=chosen if kind == "class" else None,
                    prompt=chosen if kind == "text" else None,
                    num_images_per_prompt=len(indices) if kind == "none" else 1,
                    generator=generator,
                    output_type="pt",
                    **sampling,
                )
                .images.float()
                .to(processes.device)
            )
            features = run_extractor(extractor, images, "feature_extractor")
            statistics.update(features)
            if head is not None:
                logits.append(run_extractor(head, features.float(), "feature extractor head"))
            if clip is not None:
                clip_mean.update(clip_score(images, chosen, *clip).to(processes.device, torch.float64))
            progress.update(len(indices))
    metrics = {"fid": frechet_distance(statistics.compute(), reference)}
    if head is not None:
        splits = inception_score_splits(total)
        all_logits = torch.cat(gather_object([torch.cat(logits)]))
        metrics["inception_score"], metrics["inception_score_std"] = inception_score(
            all_logits.softmax(1), splits
        )
        results["inception_score_splits"] = splits
    if clip is not None:
        metrics["clip_score"] = clip_mean.compute().item()
    sampling.update(fuse_qkv=args.fuse_qkv, seed=args.seed, seeds="seed + process index")
    results.update(
        model=args.model or "bundled MNIST demo",
        reference=reference_name,
        dtype=args.dtype,
        metrics=metrics,
        conditions=kind
        if kind != "class" or args.labels in (None, ["uniform"])
        else [int(x) for x in args.labels],
        sampling=sampling,
    )
    rows = [("FID", f"{metrics['fid']:.4f}")]
    if head is not None:
        score = f"{metrics['inception_score']:.4f} ± {metrics['inception_score_std']:.4f}"
        rows.append((f"Inception Score ({results['inception_score_splits']} splits)", score))
    if clip is not None:
        rows.append(("CLIP score", f"{metrics['clip_score']:.4f}"))
    rows.append(("reference", reference_name))
    _report(results, rows, args.output, processes)


# -- parser ---------------------------------------------------------------------------------------------------
EXTRACTOR_HELP = (
    "feature extractor instead of the FID Inception: 'package.module:factory' or 'path/to/file.py:factory'; "
    "factory() returns an nn.Module mapping float (B, 3, H, W) images in [0, 1] to (B, F) features, or a pair "
    "(extractor, head) whose head maps the features to (B, C) logits for the Inception Score"
)


def _add_extractor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--feature-extractor", metavar="SPEC", help=EXTRACTOR_HELP)
    parser.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="local FID Inception weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth or "
        "pytorch-fid's pt_inception-2015-12-05-6726825d.pth), for offline machines; needs torch-fidelity",
    )


def _add_data_arguments(parser: argparse.ArgumentParser, required: bool, num_samples_flag: str) -> None:
    parser.add_argument(
        "--dataset",
        required=required,
        help="datasets source: a .parquet/.csv/.json/.arrow file, a folder load_dataset reads, or a Hub id",
    )
    parser.add_argument("--split", help="split, may slice: 'test', 'train[9000:]' (default: the only split)")
    parser.add_argument("--image-column", default="image", help="column of images (default: image)")
    parser.add_argument(num_samples_flag, type=int, help="use the first N rows (default: all)")


def _add_run_arguments(parser: argparse.ArgumentParser, with_dtype: bool = True) -> None:
    parser.add_argument(
        "--batch-size", type=int, default=50, help="images per batch and process (default: 50)"
    )
    parser.add_argument(
        "--device", help="default: the process's accelerate device (cuda if available, else cpu)"
    )
    if with_dtype:
        parser.add_argument(
            "--dtype",
            choices=DTYPES,
            default="float32",
            help="dtype of the RQ models (bfloat16 on CUDA; the feature extractor stays float32)",
        )


def add_evaluate_parsers(commands) -> None:
    """Register ``evaluate reconstruction``, ``evaluate generation`` and ``stats`` on the ``rq-hf`` parser."""
    evaluate = commands.add_parser(
        "evaluate",
        help="rFID/PSNR/SSIM/codebook usage of an RQ-VAE, FID/IS/CLIP score of samples",
        description="Evaluate a model like the paper: results printed as a table and written as JSON. Shard "
        "with `accelerate launch --num_processes P -m rq_hf.cli evaluate ...` (process r takes its share of "
        "the data/samples, seed + r; only process 0 prints and writes).",
    )
    tasks = evaluate.add_subparsers(dest="task", required=True)

    reconstruction = tasks.add_parser(
        "reconstruction",
        help="encode + decode a dataset: rFID, PSNR, SSIM, LPIPS, per-depth codebook usage and perplexity",
        description="Encode and decode the images of a datasets source with the RQ-VAE (all code depths) and "
        "report rFID (features of originals vs reconstructions), PSNR, SSIM, LPIPS (when torchvision is "
        "installed) and per-depth codebook usage and perplexity.",
    )
    reconstruction.add_argument(
        "--model", help="pipeline or RQ-VAE folder or Hub repo id (default: the MNIST demo)"
    )
    _add_data_arguments(reconstruction, required=True, num_samples_flag="--num-samples")
    _add_extractor_arguments(reconstruction)
    _add_run_arguments(reconstruction)
    reconstruction.add_argument(
        "--no-lpips", action="store_true", help="skip LPIPS even if torchvision is installed"
    )
    reconstruction.add_argument("--output", help="results JSON (written atomically)")
    reconstruction.add_argument(
        "--codebook-figure", metavar="PNG", help="per-depth code usage plot (Figure 6 style)"
    )
    reconstruction.set_defaults(handler=run_evaluate_reconstruction, command_name="evaluate reconstruction")

    generation = tasks.add_parser(
        "generation",
        help="generate samples: FID against stats or a dataset, Inception Score, CLIP score (text models)",
        description="Generate --num-samples images and report FID against --reference-stats (.npz mu/sigma) "
        "or a --dataset, the Inception Score (10 splits from 100 samples on, else one split per 10 samples) "
        "when the extractor has a classifier head, and the CLIP score of text-to-image models (--clip-model). "
        "Class-conditional models cycle through --labels (default uniform: every class equally often).",
    )
    generation.add_argument(
        "--model", help="pipeline folder or Hub repo id (default: the bundled MNIST demo)"
    )
    generation.add_argument("--reference-stats", metavar="NPZ", help="FID reference statistics (mu, sigma)")
    _add_data_arguments(generation, required=False, num_samples_flag="--reference-num-samples")
    generation.add_argument("--num-samples", type=int, required=True, help="images to generate (>= 2)")
    generation.add_argument("--labels", nargs="+", help="'uniform' (default) or class ids to cycle through")
    generation.add_argument("--prompts-file", help="captions, one per line, cycled through (text models)")
    generation.add_argument(
        "--seed", type=int, default=0, help="process r samples with seed + r (default: 0)"
    )
    add_sampling_arguments(generation)
    generation.add_argument(
        "--clip-model", help="CLIP model folder or Hub id for the CLIP score (text models)"
    )
    _add_extractor_arguments(generation)
    _add_run_arguments(generation)
    generation.add_argument("--output", help="results JSON (written atomically)")
    generation.set_defaults(handler=run_evaluate_generation, command_name="evaluate generation")

    stats = commands.add_parser(
        "stats",
        help="FID reference statistics of a dataset (.npz mu, sigma)",
        description="Feature statistics of a datasets source in the original release's layout (.npz with mu "
        "(F,) and sigma (F, F), float64, plus num_samples), written atomically.",
    )
    _add_data_arguments(stats, required=True, num_samples_flag="--num-samples")
    stats.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="images resized (shorter side) and center-"
        "cropped to this size: the generated images' size (default: 256, the released models')",
    )
    _add_extractor_arguments(stats)
    _add_run_arguments(stats, with_dtype=False)
    stats.add_argument("--output", required=True, help="statistics .npz (written atomically)")
    stats.add_argument("--json", help="also write the summary as JSON")
    stats.set_defaults(handler=run_stats, command_name="stats")
