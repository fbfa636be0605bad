#!/usr/bin/env python
"""Measure the bundled MNIST demo pipeline and (with --write_card) write its model card.

    OMP_NUM_THREADS=1 python training/evaluate_mnist_demo.py --write_card

- reconstruction PSNR per code depth on the held-out digits (the last 1,000 of the parquet's 10,000);
- a small CNN judge trained on the 9,000 training digits: its accuracy on the held-out real digits, the label
  accuracy of generated digits (100 per class, seeded), and the Frechet distance between generated and
  held-out digits in its 128-d feature space (with the distance between training and held-out real digits,
  for scale);
- a PNG grid of 10 generated digits per class (one row per class).

Everything is seeded and runs on the CPU; one thread gives the same numbers on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import datasets
import torch
from common import ImageTransform, image_grid
from PIL import Image
from torch import nn
from torch.nn import functional as F
from train_rqtransformer import model_card

from rq_hf import RQPipeline
from rq_hf.evaluation import codebook_perplexity, codebook_usage, fid_from_features, psnr
from rq_hf.releases import Metric

REPO = Path(__file__).resolve().parents[1]
DATA = str(REPO.parent / "shared" / "data" / "mnist" / "test.parquet")
TRAINING_COMMANDS = """\
export OMP_NUM_THREADS=1
python training/train_rqvae.py --model_config training/configs/rqvae-mnist.json \\
  --dataset_name parquet --train_data_files ../shared/data/mnist/test.parquet \\
  --dataset_split "train[:9000]" --resolution 32 --perceptual_weight 0 --disc_start 300 --disc_channels 32 \\
  --train_batch_size 64 --max_train_steps 600 --learning_rate 1e-3 --lr_scheduler cosine \\
  --lr_warmup_steps 50 --checkpointing_steps 200 --validation_steps 100 --seed 0 --output_dir runs/rqvae-mnist
python training/train_rqtransformer.py --vqvae runs/rqvae-mnist \\
  --model_config training/configs/rqtransformer-mnist.json --label_column label \\
  --dataset_name parquet --train_data_files ../shared/data/mnist/test.parquet \\
  --dataset_split "train[:9000]" --condition_dropout 0.1 --cache_codes --use_ema --ema_decay 0.995 \\
  --top_k 32 --train_batch_size 64 --max_train_steps 1200 --learning_rate 1e-3 --lr_warmup_steps 100 \\
  --checkpointing_steps 300 --validation_steps 300 --seed 0 --output_dir runs/rq-mnist
mkdir -p src/rq_hf/demo/mnist
cp -r runs/rq-mnist/model_index.json runs/rq-mnist/vqvae runs/rq-mnist/transformer src/rq_hf/demo/mnist/
# sampling default chosen after training, on the judge's accuracy for generated digits: top-k 4 (of 256)
python -c "from transformers import GenerationConfig as G; p = 'src/rq_hf/demo/mnist/transformer'; \\
  g = G.from_pretrained(p); g.top_k = 4; g.save_pretrained(p)"
python training/evaluate_mnist_demo.py --write_card"""


class DigitClassifier(nn.Module):
    """The judge: three conv + max-pool stages (32, 64, 128 channels) and a 128-d feature layer; grayscale
    `(B, 1, 32, 32)` in [-1, 1] -> 10 logits."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.feature = nn.Linear(128 * 4 * 4, 128)
        self.head = nn.Linear(128, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.feature(self.convs(images).flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class JudgeFeatures(nn.Module):
    """The judge's 128-d feature layer as an rq-hf feature extractor: `(B, 3, H, W)` float in [0, 1] (or uint8)
    -> `(B, 128)`; images are taken to grey in [-1, 1] and, if needed, resized to 32x32 (bilinear, antialiased),
    as the judge saw them."""

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        images = gray(images * 2 - 1)
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(
                images, size=(32, 32), mode="bilinear", antialias=True, align_corners=False
            )
        return self.classifier.features(images)


def judge_feature_extractor() -> tuple[JudgeFeatures, nn.Module]:
    """The judge as `rq-hf evaluate --feature-extractor training/evaluate_mnist_demo.py:judge_feature_extractor`:
    its 128-d features (FID) and its 10-way head (Inception Score). Trained with this script's defaults
    (9,000 training digits, 4 epochs, seed 0; about 80 s on one CPU thread) on first use and cached in
    `$MNIST_JUDGE_WEIGHTS` (default `~/.cache/rq_hf/mnist-judge.pt`)."""
    path = Path(os.environ.get("MNIST_JUDGE_WEIGHTS", "~/.cache/rq_hf/mnist-judge.pt")).expanduser()
    classifier = DigitClassifier()
    if path.is_file():
        classifier.load_state_dict(torch.load(path, weights_only=True))
    else:
        args = parse_args([])
        images, labels = load_digits(args.data, args.train_split, 32)
        classifier = train_classifier(images, labels, args.classifier_epochs, args.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
            torch.save(classifier.state_dict(), file)
        os.replace(file.name, path)
    classifier.eval()
    return JudgeFeatures(classifier), classifier.head


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=str(REPO / "src" / "rq_hf" / "demo" / "mnist"))
    parser.add_argument("--data", default=DATA, help="the MNIST parquet (10,000 digits)")
    parser.add_argument("--train_split", default="train[:9000]")
    parser.add_argument("--eval_split", default="train[9000:]")
    parser.add_argument("--samples_per_class", type=int, default=100)
    parser.add_argument("--classifier_epochs", type=int, default=4)
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance scale")
    parser.add_argument(
        "--top_k", type=int, help="sampling top-k (default: the pipeline's generation_config)"
    )
    parser.add_argument(
        "--top_p", type=float, help="sampling top-p (default: the pipeline's generation_config)"
    )
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: the pipeline's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=str(REPO / "training" / "mnist_demo_samples.png"))
    parser.add_argument("--metrics_json", help="also write the numbers to this JSON file")
    parser.add_argument("--write_card", action="store_true", help="rewrite the pipeline's README.md")
    return parser.parse_args(argv)


def load_digits(path: str, split: str, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images `(N, 3, resolution, resolution)` in [-1, 1] (as the training scripts see them) and labels."""
    dataset = datasets.load_dataset("parquet", data_files=path, split=split)
    transform = ImageTransform(resolution, 3)
    images = torch.stack([transform(image) for image in dataset["image"]])
    return images, torch.tensor(dataset["label"])


def gray(images: torch.Tensor) -> torch.Tensor:
    """RGB `(B, 3, H, W)` -> the classifier's input `(B, 1, H, W)` (channel mean)."""
    return images.mean(dim=1, keepdim=True)


@torch.enable_grad()
def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> DigitClassifier:
    torch.manual_seed(seed)
    classifier = DigitClassifier()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    inputs = gray(images)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs)).split(128):
            loss = F.cross_entropy(classifier(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return classifier.eval()


@torch.no_grad()
def judge(classifier: DigitClassifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels, 128-d features) of images `(N, 3, H, W)` in [-1, 1]."""
    features = torch.cat([classifier.features(gray(batch)) for batch in images.split(500)])
    return classifier.head(features).argmax(-1), features


@torch.no_grad()
def measure(args: argparse.Namespace, pipeline: RQPipeline) -> tuple[dict[str, float], torch.Tensor]:
    """The numbers, and the generated digits `(10 * samples_per_class, 3, H, W)` in [-1, 1], class-major."""
    vqvae = pipeline.vqvae
    resolution = vqvae.config.sample_size
    train_images, train_labels = load_digits(args.data, args.train_split, resolution)
    eval_images, eval_labels = load_digits(args.data, args.eval_split, resolution)
    classifier = train_classifier(train_images, train_labels, args.classifier_epochs, args.seed)
    eval_predictions, eval_features = judge(classifier, eval_images)
    # The floor: as many real training digits, drawn at random (the parquet's rows are ordered by writer group).
    subset = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(args.seed))
    _, train_features = judge(classifier, train_images[subset[: len(eval_images)]])
    numbers = {
        "training_digits": len(train_images),
        "held_out_digits": len(eval_images),
        "classifier_accuracy_heldout": float((eval_predictions == eval_labels).float().mean()),
        "fid_train_vs_heldout": fid_from_features(train_features, eval_features),
    }

    codes = torch.cat([vqvae.encode(batch).codes for batch in eval_images.split(250)])
    for depth in range(1, vqvae.config.num_quantizers + 1):
        reconstruction = torch.cat([vqvae.decode_codes(c, depth=depth).sample for c in codes.split(250)])
        reconstruction = reconstruction.clamp(-1, 1)
        numbers[f"psnr_depth{depth}"] = float(psnr((eval_images + 1) / 2, (reconstruction + 1) / 2).mean())
    predictions, _ = judge(classifier, reconstruction)
    numbers["reconstruction_accuracy"] = float((predictions == eval_labels).float().mean())
    for depth, perplexity in enumerate(codebook_perplexity(codebook_usage(codes, vqvae.codebook_sizes)), 1):
        numbers[f"code_perplexity_depth{depth}"] = perplexity

    labels = torch.arange(10).repeat_interleave(args.samples_per_class)
    samples = pipeline(
        class_labels=list(range(10)),
        num_images_per_prompt=args.samples_per_class,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        guidance_scale=args.guidance_scale,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="pt",
    )
    generated = samples.images * 2 - 1
    predictions, features = judge(classifier, generated)
    numbers["generated_accuracy"] = float((predictions == labels).float().mean())
    for label in range(10):
        hits = predictions[labels == label] == label
        numbers[f"generated_accuracy_class{label}"] = float(hits.float().mean())
    numbers["fid_generated_vs_heldout"] = fid_from_features(features, eval_features)
    return numbers, generated


def save_grid(generated: torch.Tensor, samples_per_class: int, path: str) -> None:
    """10 digits per class, one row per class."""
    rows = [generated[label * samples_per_class : label * samples_per_class + 10] for label in range(10)]
    Image.fromarray(image_grid(rows)).save(path)


def demo_card(args: argparse.Namespace, pipeline: RQPipeline, numbers: dict[str, float]):
    """The demo's model card: rq-hf's card with the measured numbers and the commands behind them."""
    generation = pipeline.transformer.generation_config
    top_k = generation.top_k if args.top_k is None else args.top_k
    top_p = generation.top_p if args.top_p is None else args.top_p
    temperature = generation.temperature if args.temperature is None else args.temperature
    sampling = (
        f"top_k {top_k}, top_p {top_p or 'off'}, temperature {temperature}, guidance {args.guidance_scale}"
    )
    trained_on, held_out = int(numbers["training_digits"]), int(numbers["held_out_digits"])
    judge_note = f"CNN judge trained on the {trained_on:,} training digits ({args.classifier_epochs} epochs)"
    samples = f"{10 * args.samples_per_class:,} samples ({args.samples_per_class} per class, seed {args.seed}"
    # The parquet holds MNIST's test split; datasets calls its only split "train".
    split = args.eval_split.replace("train", "test", 1)

    def metric(name: str, metric_type: str, value: float, config: str) -> Metric:
        return Metric(
            name, metric_type, round(value, 4), "MNIST held-out digits", "ylecun/mnist", split, config
        )

    metrics = [
        metric(
            f"Reconstruction PSNR, code depth{'s 1-' if depth > 1 else ' '}{depth} (dB)",
            "psnr",
            numbers[f"psnr_depth{depth}"],
            f"{held_out:,} held-out digits, 32x32, pixel range [0, 1]",
        )
        for depth in range(1, pipeline.vqvae.config.num_quantizers + 1)
    ]
    metrics += [
        metric(
            "Label accuracy of generated digits (%)",
            "accuracy",
            100 * numbers["generated_accuracy"],
            f"{samples}, {sampling}); {judge_note}",
        ),
        metric(
            "Judge accuracy on held-out real digits (%)",
            "accuracy",
            100 * numbers["classifier_accuracy_heldout"],
            judge_note,
        ),
        metric(
            "FID in the judge's feature space, generated vs held-out",
            "fid",
            numbers["fid_generated_vs_heldout"],
            f"{samples}) vs {held_out:,} held-out digits, 128-d features; {judge_note}",
        ),
        metric(
            "FID in the judge's feature space, training vs held-out real digits",
            "fid",
            numbers["fid_train_vs_heldout"],
            f"{held_out:,} random training digits vs the held-out ones (the floor, for scale); {judge_note}",
        ),
    ]
    per_class = ", ".join(
        f"{label}: {100 * numbers[f'generated_accuracy_class{label}']:.0f}" for label in range(10)
    )
    sections = f"""
## Bundled with rq-hf

This pipeline ships inside the `rq-hf` package (`rq_hf/demo/mnist`) and is the default model of
`rq-hf generate`, so `rq-hf generate --labels 0 1 2 3 4 5 6 7 8 9 --output digits.png` works offline.
Generated digits per class recognised by the judge (%): {per_class}. Accuracy of the judge on the RQ-VAE
reconstructions of the held-out digits: {100 * numbers["reconstruction_accuracy"]:.1f} %.

The transformer was trained with condition dropout 0.1 (null class id 10), so classifier-free guidance works:
`pipe(class_labels=..., guidance_scale=1.5, top_k=32)` gives more varied digits that the judge still
recognises; `python training/evaluate_mnist_demo.py --guidance_scale 1.5 --top_k 32` measures it.

## Training and evaluation

Trained on the CPU with rq-hf's `training/` scripts (one process, one thread); the digits are resized to
32x32 and their gray level replicated to RGB, so the model takes and returns 3-channel images like every other
rq-hf pipeline. No LPIPS (it needs torchvision's VGG16 weights); the PatchGAN starts at step 300 of 600.

```bash
{TRAINING_COMMANDS}
```
"""
    return model_card(
        pipeline,
        title="rq-hf MNIST demo (class-conditional RQ-VAE + RQ-Transformer)",
        datasets=["ylecun/mnist"],
        dataset_description=(
            "the MNIST test set (10,000 digits; LeCun, Cortes and Burges; CC BY-SA 3.0) from a parquet file: "
            f"`{args.train_split}` for training, `{args.eval_split}` held out for evaluation (the held-out "
            "digits come from the second, harder half of the MNIST test set; its first 5,000 are the cleaner)"
        ),
        metrics=metrics,
        sections=sections,
    )


def main(args: argparse.Namespace) -> dict[str, float]:
    pipeline = RQPipeline.from_pretrained(args.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    numbers, generated = measure(args, pipeline)
    save_grid(generated, args.samples_per_class, args.grid)
    print(json.dumps(numbers, indent=2))
    if args.metrics_json:
        Path(args.metrics_json).write_text(json.dumps(numbers, indent=2) + "\n")
    if args.write_card:
        card = demo_card(args, pipeline, numbers)
        with tempfile.NamedTemporaryFile("w", dir=args.pipeline, suffix=".md", delete=False) as file:
            file.write(str(card))
        os.replace(file.name, os.path.join(args.pipeline, "README.md"))
    return numbers


if __name__ == "__main__":
    main(parse_args())
