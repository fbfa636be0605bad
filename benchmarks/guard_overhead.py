"""Host cost of dynamo's guard check in compiled decoding: `generate(compile=True)` as shipped (steps after the first
of a call check only the guards that tell cached graphs apart) against every step checking all guards, in
alternating rounds on one model, codes asserted identical. Deep, narrow models show the guard cost best: it grows
with the layer count, not the width.

    python benchmarks/guard_overhead.py --spatial-layers 42 --depth-layers 2 --hidden-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

import rq_hf.generation_rqtransformer as generation
from rq_hf import RQTransformerConfig, RQTransformerForImageGeneration


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spatial-layers", type=int, default=42)
    parser.add_argument("--depth-layers", type=int, default=6)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8, help="timed calls per setting, alternating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = RQTransformerConfig(
        code_shape=(8, 8, 4),
        vocab_size=args.codebook_size,
        condition_vocab_size=1000,
        condition_length=1,
        hidden_size=args.hidden_size,
        codebook_dim=32,
        num_spatial_layers=args.spatial_layers,
        num_depth_layers=args.depth_layers,
        num_spatial_heads=args.heads,
        num_depth_heads=args.heads,
    )
    model = RQTransformerForImageGeneration(config).to(device).eval()
    model.set_codebook_embeddings([torch.randn(args.codebook_size, 32, device=device)] * 4)
    condition_ids = torch.randint(1000, (args.batch_size, 1), device=device)
    steps = 8 * 8 - 1
    settings = {
        "first step only (shipped)": generation._first_step_guards_only,
        "every step": contextlib.nullcontext,
    }

    def run():
        generator = torch.Generator(device).manual_seed(0)
        codes = model.generate(condition_ids=condition_ids, generator=generator, compile=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return codes

    reference = run()
    seconds = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, context in settings.items():
            generation._first_step_guards_only = context
            start = time.perf_counter()
            codes = run()
            seconds[name].append(time.perf_counter() - start)
            if not torch.equal(codes, reference):
                raise AssertionError(f"{name}: codes differ from the first call's")
    generation._first_step_guards_only = settings["first step only (shipped)"]

    print(
        f"model: {args.spatial_layers}+{args.depth_layers} layers, E={args.hidden_size}, batch {args.batch_size}, "
        f"{device}, threads {torch.get_num_threads()}, torch {torch.__version__}, best / median of {args.rounds}"
    )
    print(f"| {'full guard check on':<26} | best ms/step | median ms/step |")
    print(f"|{'-' * 28}|{'-' * 14}|{'-' * 16}|")
    for name, values in seconds.items():
        best, median = min(values) * 1000 / steps, statistics.median(values) * 1000 / steps
        print(f"| {name:<26} | {best:>12.2f} | {median:>14.2f} |")


if __name__ == "__main__":
    main()
