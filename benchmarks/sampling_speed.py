"""Images per second of `RQTransformerForImageGeneration.generate`, side by side with the uncached reference and,
with `--original-src DIR` (a checkout of kakaobrain/rq-vae-transformer), the original sampler on the same random
weights (built by the original code, converted with `rq_hf.conversion_rqtransformer`). AR sampling only; the
methods run round-robin and the best call of each is reported. On a CPU shared with other jobs, set
`OMP_WAIT_POLICY=PASSIVE` for multi-thread runs: spinning OpenMP threads otherwise make every method 10-30x slower.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sampling_speed.py --threads 2 --compile --original-src /tmp/rqorig
    python benchmarks/sampling_speed.py --device cuda --dtype bf16 --hidden-size 1536 --spatial-layers 42 \
        --depth-layers 6 --heads 24 --codebook-size 16384 --batch-size 100 --compile --no-reference \
        --original-src /path/to/rq-vae-transformer
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from rq_hf.conversion_rqtransformer import rqtransformer_config_from_original, rqtransformer_from_original
from rq_hf.modeling_rqtransformer import RQTransformerForImageGeneration

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--spatial-layers", type=int, default=6)
    parser.add_argument("--depth-layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--codebook-dim", type=int, default=256, help="RQ-VAE code width (input_embed_dim)")
    parser.add_argument("--code-shape", type=int, nargs=3, default=[8, 8, 4], metavar=("H", "W", "D"))
    parser.add_argument("--num-classes", type=int, default=1000, help="class-conditional; 0 = unconditional")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="our model's dtype")
    parser.add_argument(
        "--original-amp", action="store_true", help="original sampler under fp16 autocast (CUDA)"
    )
    parser.add_argument("--attn-implementation", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method (best is reported)")
    parser.add_argument(
        "--compile", action="store_true", help="also time generate(compile=True) (reduce-overhead)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) uncached reference")
    parser.add_argument("--original-src", type=Path, default=None, help="checkout of the original code")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def original_config(args: argparse.Namespace) -> dict:
    """The benchmark model as an original-format stage-2 config (released flags, as in measure_throughput)."""
    block = {"n_head": args.heads}
    height, width, depth = args.code_shape
    return {
        "arch": {
            "type": "rq-transformer",
            "block_size": list(args.code_shape),
            "vocab_size": args.codebook_size,
            "vocab_size_cond": args.num_classes,
            "block_size_cond": 1,
            "embed_dim": args.hidden_size,
            "input_embed_dim": args.codebook_dim,
            "input_emb_vqvae": True,
            "head_emb_vqvae": True,
            "cumsum_depth_ctx": True,
            "shared_tok_emb": True,
            "shared_cls_emb": True,
            "body": {"n_layer": args.spatial_layers, "block": dict(block)},
            "head": {"n_layer": args.depth_layers, "block": dict(block)},
        },
        "vqvae": {
            "hparams": {
                "n_embed": args.codebook_size,
                "embed_dim": args.codebook_dim,
                "latent_shape": [height, width, args.codebook_dim],
                "code_shape": [height, width, depth],
                "shared_codebook": True,
            }
        },
    }


def import_original(source: Path) -> types.SimpleNamespace:
    """Import the original RQTransformer and RQBottleneck from a checkout, at run time.

    The original `configs.py` holds dataclasses with mutable defaults that Python >= 3.11 rejects; the model code
    only uses those names in annotations, so a stand-in module replaces it.
    """
    sys.path.insert(0, str(source))
    stand_in = types.ModuleType("rqvae.models.rqtransformer.configs")
    stand_in.RQTransformerConfig = stand_in.AttentionBlockConfig = stand_in.AttentionStackConfig = object
    sys.modules["rqvae.models.rqtransformer.configs"] = stand_in
    from omegaconf import OmegaConf
    from rqvae.models.rqtransformer.transformers import RQTransformer
    from rqvae.models.rqvae.quantizations import RQBottleneck

    return types.SimpleNamespace(OmegaConf=OmegaConf, RQTransformer=RQTransformer, RQBottleneck=RQBottleneck)


def build_original(args: argparse.Namespace, config: dict, original: types.SimpleNamespace):
    """Original transformer + a `model_aux` that embeds codes with the original quantizer; random weights."""
    arch = copy.deepcopy(config["arch"])
    defaults = {"mlp_bias": True, "attn_bias": True, "attn_pdrop": 0.0, "resid_pdrop": 0.1, "gelu": "v1"}
    for stack in ("body", "head"):
        arch[stack]["block"] = {"embed_dim": args.hidden_size, **defaults, **arch[stack]["block"]}
    arch.update(embd_pdrop=0.0, scaled_head_emb_vqvae=False, use_padding_emb=False)
    transformer = original.RQTransformer(original.OmegaConf.create(arch)).eval()
    hparams = config["vqvae"]["hparams"]
    quantizer = original.RQBottleneck(
        hparams["latent_shape"], hparams["code_shape"], hparams["n_embed"], shared_codebook=True
    ).eval()
    model_aux = types.SimpleNamespace(get_code_emb_with_depth=quantizer.embed_code_with_depth)
    return transformer, quantizer, model_aux


def best_times(
    functions: list[Callable[[], torch.Tensor]], device: torch.device, repeats: int
) -> list[float]:
    """Best wall time of each function over `repeats` rounds (round-robin, so that load changes hit all alike),
    after one warm-up call each (which also compiles)."""
    for function in functions:
        function()
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            function()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    config = original_config(args)
    original = None if args.original_src is None else import_original(args.original_src)

    if original is not None:
        transformer, quantizer, model_aux = build_original(args, config, original)
        codebooks = [codebook.weight[:-1].detach() for codebook in quantizer.codebooks]
        model = rqtransformer_from_original(config, transformer.state_dict(), codebooks)
        transformer.to(device)
        quantizer.to(device)
    else:
        model = RQTransformerForImageGeneration(rqtransformer_config_from_original(config)).eval()
        model.set_codebook_embeddings(
            [torch.randn(args.codebook_size, args.codebook_dim)] * args.code_shape[2]
        )
    model.to(device=device, dtype=DTYPES[args.dtype])
    model.set_attn_implementation(args.attn_implementation)

    batch = args.batch_size
    classes = max(args.num_classes, 1)
    condition_ids = torch.randint(classes, (batch, 1), device=device) if args.num_classes > 1 else None
    generator = torch.Generator(device).manual_seed(args.seed)

    def ours(**kwargs) -> Callable[[], torch.Tensor]:
        return lambda: model.generate(
            condition_ids=condition_ids,
            num_samples=batch,
            top_k=None,
            top_p=None,
            generator=generator,
            **kwargs,
        )

    methods: list[tuple[str, Callable[[], torch.Tensor]]] = [
        (f"rq-hf generate ({args.dtype}, {args.attn_implementation}, static cache)", ours())
    ]
    if args.compile:
        methods.append(
            (f"rq-hf generate ({args.dtype}, {args.attn_implementation}, compiled)", ours(compile=True))
        )
    if not args.no_reference:
        methods.append((f"rq-hf uncached reference ({args.dtype})", ours(use_cache=False)))
    if original is not None:
        empty = torch.zeros(batch, *args.code_shape, dtype=torch.long, device=device)
        cond = (
            torch.zeros(batch, 1, dtype=torch.long, device=device) if condition_ids is None else condition_ids
        )
        amp = args.original_amp and device.type == "cuda"

        def original_sampler(top_k: int | None = None) -> torch.Tensor:
            return transformer.sample(empty, model_aux=model_aux, cond=cond, top_k=top_k, amp=amp)

        label = "original sampler (fp16 autocast)" if amp else "original sampler (fp32)"
        methods.append((label, original_sampler))

    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"threads: {torch.get_num_threads()}, torch {torch.__version__}"
    )
    print(
        f"model: E={args.hidden_size}, {args.spatial_layers}+{args.depth_layers} layers, {args.heads} heads, "
        f"K={args.codebook_size}, codes {'x'.join(map(str, args.code_shape))}, classes {args.num_classes}, "
        f"batch {batch}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
    )
    with torch.no_grad():
        times = best_times([function for _, function in methods], device, args.repeats)
        results = [(label, seconds) for (label, _), seconds in zip(methods, times, strict=True)]
        if original is not None:
            greedy_ours = model.generate(condition_ids=condition_ids, num_samples=batch, top_k=1)
            same = torch.equal(greedy_ours, original_sampler(top_k=1))
            print(f"greedy codes identical to the original sampler: {same}")

    original_seconds = next((s for label, s in results if label.startswith("original")), None)
    reference_seconds = next((s for label, s in results if "reference" in label), None)
    header = (
        f"| {'method':<48} | {'images/s':>9} | {'ms/image':>9} | {'vs original':>11} | {'vs reference':>12} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for label, seconds in results:
        ratio_original = f"{original_seconds / seconds:.2f}x" if original_seconds else "-"
        ratio_reference = f"{reference_seconds / seconds:.2f}x" if reference_seconds else "-"
        print(
            f"| {label:<48} | {batch / seconds:>9.2f} | {seconds / batch * 1000:>9.1f} | {ratio_original:>11} | "
            f"{ratio_reference:>12} |"
        )


if __name__ == "__main__":
    main()
