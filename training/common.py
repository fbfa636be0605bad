"""Shared parts of `train_rqvae.py` and `train_rqtransformer.py`: flags, data, checkpoints, logging.

The two scripts follow diffusers' `examples/*/train_*.py`: argparse flags with the same names, one
`Accelerator`, a `datasets` source behind a plain `DataLoader`, the loop inside `accelerator.accumulate`,
checkpoints through `save_state` / `load_state`. What both need lives here, once.

Resuming gives the weights of an uninterrupted run: the shuffling is seeded per epoch (accelerate's seedable
sampler), every random augmentation draws from a generator seeded by (seed, epoch, example index), the
DataLoader has its own generator (so starting an epoch never touches the global RNG), `save_state` stores the
RNG states of every process, and a resumed run skips the batches of the current epoch it had already seen.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import SchedulerType
from PIL import Image
from tqdm.auto import tqdm

from rq_hf import RQVAEModel
from rq_hf.evaluation import codebook_perplexity

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
BUILDERS_BY_SUFFIX = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
}

logger = get_logger(__name__)


class UsageError(ValueError):
    """A flag value that cannot work, found before the first training step; reported as one line."""


def flag_error(flag: str, expected: str, got: object) -> UsageError:
    """`UsageError("--flag: expected ..., got ...")`."""
    return UsageError(f"{flag}: expected {expected}, got {got!r}")


def run_script(
    main: Callable[[argparse.Namespace], object], parse_args: Callable[[], argparse.Namespace]
) -> None:
    """Run a training script: a `UsageError` ends it with one line on stderr and exit status 2."""
    args = parse_args()
    try:
        main(args)
    except UsageError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)


# -- flags ------------------------------------------------------------------------------------------------
def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Dataset and image flags (diffusers' names)."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset_name",
        help="Hub dataset id, local dataset folder, or builder (parquet, imagefolder, "
        "csv, json, arrow) used with --train_data_files; inferred from their suffix when omitted",
    )
    group.add_argument("--dataset_config_name", help="dataset configuration name")
    group.add_argument("--train_data_files", nargs="+", help="data files (globs allowed) for a builder")
    group.add_argument(
        "--dataset_split",
        default="train",
        help="split to train on; datasets' slicing works, e.g. 'train[:9000]' (default: train)",
    )
    group.add_argument("--cache_dir", help="datasets cache folder")
    group.add_argument("--image_column", default="image", help="column of images (datasets.Image feature)")
    group.add_argument(
        "--resolution",
        type=int,
        help="training image size (shorter side resized, then cropped square); "
        "default: the model's sample_size",
    )
    group.add_argument("--center_crop", action="store_true", help="center crop (default: random crop)")
    group.add_argument("--random_flip", action="store_true", help="random horizontal flips")
    group.add_argument(
        "--streaming", action="store_true", help="stream the dataset (needs --max_train_steps)"
    )
    group.add_argument("--max_train_samples", type=int, help="train on the first N examples only")
    group.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes")


def add_optimization_arguments(
    parser: argparse.ArgumentParser,
    *,
    learning_rate: float,
    adam_beta1: float,
    adam_beta2: float,
    adam_weight_decay: float,
    lr_scheduler: str,
    max_grad_norm: float | None,
) -> None:
    """Batch, schedule and optimizer flags; the defaults are each script's original recipe."""
    group = parser.add_argument_group("optimization")
    group.add_argument("--train_batch_size", type=int, default=16, help="batch size per process")
    group.add_argument("--num_train_epochs", type=int, default=1)
    group.add_argument("--max_train_steps", type=int, help="optimizer steps; overrides --num_train_epochs")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for memory")
    group.add_argument("--learning_rate", type=float, default=learning_rate)
    group.add_argument("--lr_scheduler", default=lr_scheduler, choices=[s.value for s in SchedulerType])
    group.add_argument("--lr_warmup_steps", type=int, default=0)
    group.add_argument("--adam_beta1", type=float, default=adam_beta1)
    group.add_argument("--adam_beta2", type=float, default=adam_beta2)
    group.add_argument("--adam_weight_decay", type=float, default=adam_weight_decay)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument(
        "--max_grad_norm", type=float, default=max_grad_norm, help="gradient clipping norm (0: no clipping)"
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Output, precision, checkpoint, logging and Hub flags (diffusers' names)."""
    group = parser.add_argument_group("run")
    group.add_argument("--output_dir", required=True, help="model folder, checkpoints and logs")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], help="default: accelerate's configuration"
    )
    group.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs")
    group.add_argument(
        "--checkpointing_steps",
        type=int,
        default=500,
        help="save_state every N optimizer steps, in OUTPUT_DIR/checkpoint-N",
    )
    group.add_argument("--checkpoints_total_limit", type=int, help="keep only the newest N checkpoints")
    group.add_argument(
        "--resume_from_checkpoint",
        help="'latest' (the newest checkpoint in --output_dir, if any) or a checkpoint folder",
    )
    group.add_argument("--validation_steps", type=int, default=500, help="validate every N optimizer steps")
    group.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none")
    group.add_argument("--logging_dir", default="logs", help="tracker folder, relative to --output_dir")
    group.add_argument("--tracker_project_name", help="tracker run name (default: the script name)")
    group.add_argument("--push_to_hub", action="store_true", help="upload the result with its model card")
    group.add_argument("--hub_model_id", help="Hub repo id (default: the name of --output_dir)")
    group.add_argument("--hub_token", help="Hub token (default: the logged-in one)")


def check_common_arguments(args: argparse.Namespace) -> None:
    """Flag checks that need no data and no model; raise `UsageError`."""
    if args.dataset_name is None and not args.train_data_files:
        raise flag_error("--dataset_name", "a dataset (or --train_data_files)", None)
    for flag in (
        "train_batch_size",
        "num_train_epochs",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "validation_steps",
    ):
        value = getattr(args, flag)
        if value < 1:
            raise flag_error(f"--{flag}", "an int >= 1", value)
    for flag in ("max_train_steps", "checkpoints_total_limit", "max_train_samples", "resolution"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise flag_error(f"--{flag}", "an int >= 1 (or the flag left out)", value)
    for flag in ("lr_warmup_steps", "dataloader_num_workers"):
        if getattr(args, flag) < 0:
            raise flag_error(f"--{flag}", "an int >= 0", getattr(args, flag))
    if not args.learning_rate > 0:
        raise flag_error("--learning_rate", "a float > 0", args.learning_rate)
    for flag in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, flag) < 1:
            raise flag_error(f"--{flag}", "a float in [0, 1)", getattr(args, flag))
    if args.adam_weight_decay < 0 or (args.max_grad_norm is not None and args.max_grad_norm < 0):
        raise flag_error(
            "--adam_weight_decay/--max_grad_norm", "floats >= 0", (args.adam_weight_decay, args.max_grad_norm)
        )
    if args.streaming and args.max_train_steps is None:
        raise flag_error("--max_train_steps", "a step count with --streaming (a stream has no length)", None)
    resume = args.resume_from_checkpoint
    if resume is not None and resume != "latest" and not os.path.isdir(resume):
        raise flag_error("--resume_from_checkpoint", "'latest' or an existing checkpoint folder", resume)


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """The `Accelerator` of a run: gradient accumulation, precision, trackers under OUTPUT_DIR/LOGGING_DIR and
    a shuffling seeded by `--seed` (the same order on every process, epoch by epoch). Also sets up logging and
    seeds every process with `--seed` alike, so that models built next start from identical weights."""
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise UsageError(
            f"accelerate launch: expected the {launched} launched processes to join one process group, got "
            f"{accelerator.num_processes} (without a GPU, set ACCELERATE_USE_CPU=1 in the environment)"
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    return accelerator


def start_run(accelerator: Accelerator, args: argparse.Namespace, project_name: str) -> None:
    """Create `--output_dir` and start the trackers with the flags as hyper-parameters (lists and None as
    strings); called once everything is checked, so a refused run leaves nothing behind."""
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    config = {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in vars(args).items()
    }
    accelerator.init_trackers(args.tracker_project_name or project_name, config=config)


# -- data -------------------------------------------------------------------------------------------------
def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _is_remote(path: str) -> bool:
    return "://" in path


def load_training_dataset(
    args: argparse.Namespace, columns: Mapping[str, str | None]
) -> datasets.Dataset | datasets.IterableDataset:
    """Load `--dataset_split` of the dataset named by the flags and check that it has `columns`
    (flag -> column name; `None` entries are skipped). Raises `UsageError` naming the flag at fault."""
    data_files = args.train_data_files
    if data_files:
        missing = [
            path
            for path in data_files
            if not _is_remote(path) and not glob.glob(os.path.expanduser(path), recursive=True)
        ]
        if missing:
            raise flag_error("--train_data_files", "existing files (or remote URLs)", missing)
    name = args.dataset_name
    if name is None:
        suffixes = {Path(path).suffix.lower() for path in data_files}
        builders = {BUILDERS_BY_SUFFIX.get(suffix) for suffix in suffixes}
        if len(builders) != 1 or None in builders:
            raise flag_error(
                "--dataset_name",
                f"a builder for files with suffixes {sorted(suffixes)} "
                f"(one of {sorted(set(BUILDERS_BY_SUFFIX.values()))}, or imagefolder)",
                None,
            )
        name = builders.pop()
    elif not os.path.exists(os.path.expanduser(name)) and _looks_like_path(name):
        raise flag_error(
            "--dataset_name", "a Hub dataset id, an existing local folder or a builder name", name
        )
    try:
        dataset = datasets.load_dataset(
            os.path.expanduser(name),
            args.dataset_config_name,
            data_files=data_files,
            split=args.dataset_split,
            cache_dir=args.cache_dir,
            streaming=args.streaming,
        )
    except ValueError as error:
        if "split" in str(error).lower():
            raise flag_error(
                "--dataset_split", "a split of the dataset", f"{args.dataset_split} ({error})"
            ) from error
        raise flag_error("--dataset_name", "a loadable dataset", f"{name} ({error})") from error
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
        raise flag_error(
            "--dataset_name",
            "a Hub dataset id, an existing local folder or a builder name",
            f"{name} ({type(error).__name__}: {error})",
        ) from error
    features = dataset.features
    if features is None:  # a stream whose features are only known from its rows
        features = datasets.Features.from_dict({key: None for key in next(iter(dataset))})
    for flag, column in columns.items():
        if column is not None and column not in features:
            raise flag_error(flag, f"a column of the dataset ({', '.join(features)})", column)
    if args.max_train_samples is not None:
        dataset = (
            dataset.take(args.max_train_samples)
            if args.streaming
            else dataset.select(range(min(args.max_train_samples, len(dataset))))
        )
    if not args.streaming and len(dataset) == 0:
        raise flag_error("--dataset_split", "a split with examples", args.dataset_split)
    return dataset


def hub_dataset_id(name: str | None) -> str | None:
    """`--dataset_name` when it is a Hub dataset id (namespace/name, not a local folder), else None."""
    return name if name and name.count("/") == 1 and not os.path.exists(name) else None


def data_description(args: argparse.Namespace) -> str:
    """The training data in words, for model cards."""
    source = args.dataset_name or "data"
    if args.train_data_files:
        source += " files " + ", ".join(Path(path).name for path in args.train_data_files)
    return f"{source}, split `{args.dataset_split}`"


def check_image_column(dataset: datasets.Dataset | datasets.IterableDataset, column: str) -> None:
    """Raise `UsageError` unless `column` holds images (a `datasets.Image` feature)."""
    feature = dataset.features[column] if dataset.features is not None else None
    if feature is not None and not isinstance(feature, datasets.Image):
        raise flag_error(
            "--image_column", "a column of images (datasets.Image feature)", f"{column}: {feature}"
        )


def check_resolution(resolution: int, vqvae: RQVAEModel, flag: str = "--resolution") -> None:
    """Raise `UsageError` unless the RQ-VAE's downsampling (and code patches) divide `resolution`."""
    factor_h, factor_w = vqvae.downsample_factor
    if resolution % factor_h or resolution % factor_w:
        raise flag_error(flag, f"a multiple of the RQ-VAE's downsampling {factor_h}x{factor_w}", resolution)


class ImageTransform:
    """PIL image -> float tensor `(C, resolution, resolution)` in [-1, 1]: the shorter side resized to
    `resolution` (bilinear, antialiased), a square crop, an optional horizontal flip.

    Called with a `torch.Generator`, the crop is random unless `center_crop` and the flip happens with
    probability 1/2 when `random_flip`; called with `None` it is deterministic (center crop, no flip), the
    view used for validation and cached codes. `channels` is 3 (RGB) or 1 (grayscale).
    """

    def __init__(
        self, resolution: int, channels: int = 3, center_crop: bool = False, random_flip: bool = False
    ):
        if channels not in (1, 3):
            raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB), got {channels}")
        self.resolution = resolution
        self.mode = "RGB" if channels == 3 else "L"
        self.center_crop = center_crop
        self.random_flip = random_flip

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = image.convert(self.mode)
        size = self.resolution
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        if (width, height) != image.size:
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        if generator is None or self.center_crop:
            left, top = (width - size) // 2, (height - size) // 2
        else:
            left = int(torch.randint(width - size + 1, (1,), generator=generator))
            top = int(torch.randint(height - size + 1, (1,), generator=generator))
        image = image.crop((left, top, left + size, top + size))
        if generator is not None and self.random_flip and float(torch.rand(1, generator=generator)) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        return pixels.permute(2, 0, 1).float().div(127.5).sub(1.0)


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of example `index` in `epoch`: independent of workers, processes and resumption."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


class TrainingExamples(torch.utils.data.Dataset):
    """Map-style view of a `datasets.Dataset`: item `i` of epoch `e` is `prepare(row_i, generator)` with
    `example_generator(seed, e, i)`."""

    def __init__(
        self, dataset: datasets.Dataset, prepare: Callable[[dict, torch.Generator], dict], seed: int
    ):
        self.dataset, self.prepare, self.seed, self.epoch = dataset, prepare, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.prepare(self.dataset[index], example_generator(self.seed, self.epoch, index))


class StreamingTrainingExamples(torch.utils.data.IterableDataset):
    """Iterable view of a streamed `datasets.IterableDataset`, shuffled with a buffer (reseeded each epoch);
    the n-th example of an epoch is `prepare(row, example_generator(seed, epoch, n))`."""

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        prepare: Callable[[dict, torch.Generator], dict],
        seed: int,
        buffer_size: int = 1000,
    ):
        self.dataset = dataset.shuffle(seed=seed, buffer_size=buffer_size)
        self.prepare, self.seed, self.epoch = prepare, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        for index, row in enumerate(self.dataset):
            yield self.prepare(row, example_generator(self.seed, self.epoch, index))


def make_examples(
    dataset: datasets.Dataset | datasets.IterableDataset,
    prepare: Callable[[dict, torch.Generator], dict],
    seed: int,
) -> TrainingExamples | StreamingTrainingExamples:
    """The map-style or streaming view of `dataset`."""
    if isinstance(dataset, datasets.IterableDataset):
        return StreamingTrainingExamples(dataset, prepare, seed)
    return TrainingExamples(dataset, prepare, seed)


def make_dataloader(
    examples: TrainingExamples | StreamingTrainingExamples,
    args: argparse.Namespace,
    collate_fn: Callable[[list[dict]], dict] | None = None,
) -> torch.utils.data.DataLoader:
    """A shuffling DataLoader with its own seeded generator (never the global RNG)."""
    return torch.utils.data.DataLoader(
        examples,
        batch_size=args.train_batch_size,
        shuffle=isinstance(examples, TrainingExamples),
        num_workers=args.dataloader_num_workers,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(args.seed),
    )


# -- models -----------------------------------------------------------------------------------------------
def locate_component(path_or_repo: str, component: str, flag: str) -> tuple[str, str | None]:
    """Where a model is: `(folder or repo id, subfolder)`, the subfolder being `component` for a pipeline
    (a folder or Hub repo holding `component/config.json`) and None for the model's own folder."""
    path = os.path.expanduser(path_or_repo)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, component, "config.json")):
            return path, component
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise flag_error(
                flag, f"a model folder (config.json) or a pipeline folder ({component}/)", path_or_repo
            )
        return path, None
    if _looks_like_path(path_or_repo):
        raise flag_error(flag, "an existing folder or a Hub repo id", path_or_repo)
    from huggingface_hub import file_exists

    return path_or_repo, component if file_exists(path_or_repo, f"{component}/config.json") else None


def load_rqvae(path_or_repo: str, flag: str) -> RQVAEModel:
    """An RQ-VAE from a model folder, a pipeline folder (its vqvae/) or a Hub repo of either."""
    location, subfolder = locate_component(path_or_repo, "vqvae", flag)
    try:
        return RQVAEModel.from_pretrained(location, subfolder=subfolder)
    except (OSError, ValueError) as error:
        raise flag_error(flag, "a loadable RQVAEModel", f"{path_or_repo} ({error})") from error


# -- schedule and checkpoints -----------------------------------------------------------------------------
def training_length(
    args: argparse.Namespace, dataloader: torch.utils.data.DataLoader
) -> tuple[int | None, int]:
    """(optimizer steps per epoch, or None for a stream; total optimizer steps) of a prepared dataloader."""
    if args.streaming:
        return None, args.max_train_steps
    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    return steps_per_epoch, args.max_train_steps or args.num_train_epochs * steps_per_epoch


def checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints `(step, path)` in `output_dir`, oldest first."""
    found = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = CHECKPOINT_PATTERN.match(name)
            if match and os.path.isdir(os.path.join(output_dir, name)):
                found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def resume_checkpoint(args: argparse.Namespace) -> tuple[str | None, int]:
    """(checkpoint folder to resume from or None, its optimizer step)."""
    if args.resume_from_checkpoint is None:
        return None, 0
    if args.resume_from_checkpoint == "latest":
        found = checkpoints(args.output_dir)
        return (found[-1][1], found[-1][0]) if found else (None, 0)
    match = CHECKPOINT_PATTERN.match(Path(args.resume_from_checkpoint).name)
    if match is None:
        raise flag_error(
            "--resume_from_checkpoint", "a folder named checkpoint-STEP", args.resume_from_checkpoint
        )
    return args.resume_from_checkpoint, int(match.group(1))


def save_checkpoint(accelerator: Accelerator, args: argparse.Namespace, step: int) -> str:
    """`save_state` into OUTPUT_DIR/checkpoint-STEP on every process (each stores its RNG state), written
    under a temporary name and renamed when complete; then the oldest beyond `--checkpoints_total_limit`
    are removed."""
    final = os.path.join(args.output_dir, f"checkpoint-{step}")
    partial = final + ".partial"
    if accelerator.is_main_process and os.path.isdir(partial):
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.rename(partial, final)
        if args.checkpoints_total_limit is not None:
            for _, old in checkpoints(args.output_dir)[: -args.checkpoints_total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def restore_state(
    accelerator: Accelerator, args: argparse.Namespace, resume_dir: str | None, first_step: int
) -> None:
    """Once the models are prepared: switch every process to its own random stream, then load the checkpoint
    `resume_dir` (from `resume_checkpoint`) when there is one, which also restores each process's RNG states."""
    set_seed(args.seed, device_specific=True)
    if resume_dir is not None:
        accelerator.load_state(resume_dir)
        logger.info(f"Resumed from {resume_dir} (step {first_step})")
    elif args.resume_from_checkpoint is not None:
        logger.info("No checkpoint to resume from: starting a new run")


def step_progress(accelerator: Accelerator, max_train_steps: int, first_step: int) -> tqdm:
    """The optimizer-step progress bar, on the local main process only."""
    return tqdm(
        range(max_train_steps),
        initial=first_step,
        desc="steps",
        disable=not accelerator.is_local_main_process,
    )


def register_pretrained_hooks(accelerator: Accelerator, subfolders: Mapping[type, str]) -> None:
    """Store the models of these classes in checkpoints as `save_pretrained` folders (CHECKPOINT/SUBFOLDER),
    loadable with `from_pretrained`, instead of accelerate's anonymous `model_N.safetensors`."""

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        if not accelerator.is_main_process:
            return
        for index in reversed(range(len(models))):
            model = accelerator.unwrap_model(models[index])
            if type(model) in subfolders:
                model.save_pretrained(os.path.join(output_dir, subfolders[type(model)]))
                weights.pop(index)

    def load_hook(models: list, input_dir: str) -> None:
        for index in reversed(range(len(models))):
            model = accelerator.unwrap_model(models[index])
            if type(model) in subfolders:
                loaded = type(model).from_pretrained(os.path.join(input_dir, subfolders[type(model)]))
                model.load_state_dict(loaded.state_dict())
                models.pop(index)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def training_batches(
    accelerator: Accelerator,
    dataloader: torch.utils.data.DataLoader,
    examples: TrainingExamples | StreamingTrainingExamples,
    steps_per_epoch: int | None,
    first_step: int,
) -> Iterator[dict]:
    """The batches from optimizer step `first_step` on, epoch after epoch, for ever (the caller stops);
    the epoch and the batches already seen are derived from `first_step`."""
    accumulation = accelerator.gradient_accumulation_steps
    if steps_per_epoch is None:  # a stream: one long epoch, resumed by skipping batches
        epoch, skip = 0, first_step * accumulation
    else:
        epoch, skip = divmod(first_step, steps_per_epoch)
        skip *= accumulation
    while True:
        examples.set_epoch(epoch)
        dataloader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        skip = 0
        yield from loader
        epoch += 1


def push_folder(args: argparse.Namespace) -> str:
    """Upload OUTPUT_DIR (without checkpoints, logs and validation images) to `--hub_model_id`."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
    repo_id = create_repo(repo_id, exist_ok=True, token=args.hub_token).repo_id
    upload_folder(
        repo_id=repo_id,
        folder_path=args.output_dir,
        token=args.hub_token,
        ignore_patterns=["checkpoint-*", f"{args.logging_dir}/*", "validation/*"],
        commit_message="Upload model trained with rq-hf",
    )
    return repo_id


# -- logging ----------------------------------------------------------------------------------------------
def image_grid(rows: Sequence[torch.Tensor]) -> np.ndarray:
    """Rows of images `(N, C, H, W)` in [-1, 1] -> one uint8 `(H_total, W_total, 3)` grid, rows 4 px apart."""
    images = torch.stack([torch.cat(list(row.detach().float().cpu().clamp(-1, 1)), dim=2) for row in rows])
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    images = torch.nn.functional.pad(images, (0, 0, 2, 2), value=-1.0)
    grid = torch.cat(list(images), dim=1)
    return ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def log_image(accelerator: Accelerator, output_dir: str, tag: str, grid: np.ndarray, step: int) -> str:
    """Log a uint8 grid to the trackers that take images and save it as OUTPUT_DIR/validation/TAG-STEP.png."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, grid, step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(grid)}, step=step)
    path = os.path.join(output_dir, "validation", f"{tag}-{step}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def code_counts(codes: torch.Tensor, codebook_sizes: Sequence[int]) -> list[torch.Tensor]:
    """Per-depth code counts `[(K_d,)]` of codes `(B, h, w, D)`."""
    return [
        torch.bincount(codes[..., depth].flatten(), minlength=size)
        for depth, size in enumerate(codebook_sizes)
    ]


def codebook_logs(counts: Sequence[torch.Tensor], prefix: str) -> dict[str, float]:
    """Per-depth share of codes used and perplexity of code counts (summed over processes by the caller)."""
    logs = {}
    perplexities = codebook_perplexity([count.cpu() for count in counts])
    for depth, (count, perplexity) in enumerate(zip(counts, perplexities, strict=True)):
        logs[f"{prefix}/usage_depth{depth + 1}"] = float((count > 0).float().mean())
        logs[f"{prefix}/perplexity_depth{depth + 1}"] = perplexity
    return logs
