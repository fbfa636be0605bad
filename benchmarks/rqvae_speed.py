"""Encode+quantize and decode throughput of RQVAEModel for the released 256x256 configuration.

Random weights (speed does not depend on them). Each row is compared with a reference that runs the
same model the way the original scripts do: one image at a time, fp32, no autocast.

    python benchmarks/rqvae_speed.py --threads 2 --batch-size 4           # CPU, fp32
    python benchmarks/rqvae_speed.py --device cuda --batch-size 64        # CUDA, fp32 and bf16

bf16 is measured by default only on CUDA: on CPUs without native bf16 (no AVX512-BF16/AMX, such as this
project's 2-core machines) a bf16 3x3 convolution at 256x256 runs about 200x slower than fp32
(`--dtypes float32 bfloat16` forces it).
"""

from __future__ import annotations

import argparse
import time

import torch

from rq_hf import RQVAEModel


def released_config(resolution: int) -> dict:
    """The released RQ-VAE (f32, 8x8x4 codes at 256x256, K=16384): diffusers defaults of RQVAEModel."""
    return dict(sample_size=resolution)


def best_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    timings = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return min(timings)


def measure(model, images, dtype, one_at_a_time: bool, repeats: int) -> tuple[float, float]:
    """Images/s of (encode + quantize, decode of codes)."""
    device = images.device
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    batches = images.split(1) if one_at_a_time else [images]

    @torch.no_grad()
    def encode():
        with autocast:
            return [model.encode(batch).codes for batch in batches]

    codes = encode()

    @torch.no_grad()
    def decode():
        with autocast:
            for code in codes:
                model.decode_codes(code)

    n = images.shape[0]
    return n / best_time(encode, repeats, device), n / best_time(decode, repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float32", "bfloat16", "float16"],
        help="autocast dtypes of the batched rows (default: float32, plus bfloat16 on CUDA)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = RQVAEModel(**released_config(args.resolution)).to(device).eval()
    images = torch.rand(args.batch_size, 3, args.resolution, args.resolution, device=device) * 2 - 1

    reference = measure(model, images, torch.float32, one_at_a_time=True, repeats=args.repeats)
    rows = [("reference: one image at a time, fp32", torch.float32, True, reference)]
    dtypes = args.dtypes or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"])
    for dtype in (getattr(torch, name) for name in dtypes):
        rows.append(
            (
                f"rq-hf batched, {str(dtype).removeprefix('torch.')}",
                dtype,
                False,
                measure(model, images, dtype, one_at_a_time=False, repeats=args.repeats),
            )
        )

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"RQ-VAE {args.resolution}x{args.resolution}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters, batch {args.batch_size}, {name}, torch {torch.__version__}"
    )
    print(f"| {'setting':<38} | encode img/s | ratio | decode img/s | ratio |")
    print(f"|{'-' * 40}|--------------|-------|--------------|-------|")
    for label, _, _, (encode, decode) in rows:
        print(
            f"| {label:<38} | {encode:12.2f} | {encode / reference[0]:5.2f} | {decode:12.2f} | "
            f"{decode / reference[1]:5.2f} |"
        )


if __name__ == "__main__":
    main()
