"""Images per second of `RQTransformerForImageGeneration.generate`, side by side with the uncached reference and,
with `--original-src DIR` (a checkout of kakaobrain/rq-vae-transformer), the original sampler on the same random
weights (built by the original code, converted with `rq_hf.conversion_rqtransformer`).

Each batch size of `--batch-size` is timed in turn; within one batch size the methods run round-robin after one
warm-up call each (the warm-up of `compile=True` compiles; its time is reported) and the best call is kept.
"AR" is code sampling only; with `--end-to-end` the codes are also decoded by an RQ-VAE of the released 256x256
configuration (random weights): rq-hf decodes in batches of `--decode-batch-size` in the model's dtype, the
original's rows decode one image at a time in fp32, as the original scripts do. `--json-output FILE` appends
one row per measurement (the schema of `rq_hf.evaluation.figures`, plus `stage`, `ms_per_image`, `device`, ...),
which `rq_hf.evaluation.plot_sampling_speed` draws as the paper's Figure 4. `--time-budget` skips what would
start after that many seconds (for leased machines). `--profile FILE` profiles one call of the fastest rq-hf
method per batch size (top operators printed, a Chrome trace written). On a CPU shared with other jobs, set
`OMP_WAIT_POLICY=PASSIVE` for multi-thread runs: spinning OpenMP threads otherwise make every method 10-30x slower.

Decoding-step variants are timed side by side in the same round-robin: `--attn-implementation` (several values:
sdpa, eager, or `decode_reduction`, a candidate defined here), `--qkv separate fused` (`fuse_qkv_projections()`)
and, with `--compile`, `--compile-mode` (`auto`: `generate(compile=True)`, the library's choice for the device;
or torch.compile modes). Each (attention, qkv) pair and each
further compile mode is one copy of the model (memory: one model and one set of KV caches per compiled row);
the uncached reference uses the first.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sampling_speed.py --threads 2 --compile --original-src /tmp/rqorig
    python benchmarks/sampling_speed.py --device cuda --dtype bf16 --hidden-size 1536 --spatial-layers 42 \
        --depth-layers 6 --heads 24 --codebook-size 16384 --batch-size 100 500 --compile --no-reference \
        --end-to-end --original-src /path/to/rq-vae-transformer --original-precision fp32 fp16 \
        --json-output speed.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AttentionInterface

from rq_hf.conversion_rqtransformer import rqtransformer_config_from_original, rqtransformer_from_original
from rq_hf.modeling_rqtransformer import RQTransformerForImageGeneration, eager_attention_forward

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
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8], help="one or more batch sizes")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="our model's dtype")
    parser.add_argument(
        "--original-precision",
        choices=["fp32", "fp16"],
        nargs="+",
        default=["fp32"],
        help="original sampler in fp32 and/or under fp16 autocast (its sampling scripts' setting; CUDA only)",
    )
    parser.add_argument(
        "--attn-implementation",
        choices=["sdpa", "eager", "decode_reduction"],
        nargs="+",
        default=["sdpa"],
        help="one model variant per value (decode_reduction: see decode_reduction_attention)",
    )
    parser.add_argument(
        "--qkv",
        choices=["separate", "fused"],
        nargs="+",
        default=["separate"],
        help="query/key/value projections as three matrices or fused (model.fuse_qkv_projections()); one "
        "variant per value, crossed with --attn-implementation",
    )
    parser.add_argument(
        "--compile-mode",
        choices=["auto", "reduce-overhead", "max-autotune", "default", "max-autotune-no-cudagraphs"],
        nargs="+",
        default=["auto"],
        help="with --compile: one compiled row per mode and variant; auto is generate(compile=True) (CUDA graphs "
        "on GPU, autotuned GEMM templates on frozen weights on CPU), the others torch.compile modes",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method (best is reported)")
    parser.add_argument(
        "--compile", action="store_true", help="also time compiled decoding (see --compile-mode)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) uncached reference")
    parser.add_argument("--original-src", type=Path, default=None, help="checkout of the original code")
    parser.add_argument(
        "--end-to-end", action="store_true", help="also decode the codes with a released-shape RQ-VAE"
    )
    parser.add_argument("--decode-batch-size", type=int, default=64, help="rq-hf RQ-VAE decoding batch")
    parser.add_argument("--json-output", type=Path, default=None, help="append result rows to this JSON list")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; later measurements skipped")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="after the timings of each batch size, profile one call of the fastest rq-hf method: print its "
        "top operators and write a Chrome trace to PROFILE-batch<B>.json",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.end_to_end and tuple(args.code_shape) != (8, 8, 4):
        parser.error(
            f"--end-to-end: expected --code-shape 8 8 4 (the released RQ-VAE), got {args.code_shape}"
        )
    if args.profile is not None and not args.profile.parent.is_dir():
        parser.error(f"--profile: expected a file path in an existing folder, got {str(args.profile)!r}")
    if "fp16" in args.original_precision and args.device == "cpu" and args.original_src is not None:
        parser.error("--original-precision: fp16 autocast needs --device cuda, got cpu")
    return args


def decode_reduction_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """
    Candidate attention for one-query decoding steps, timed here before any library adoption: `q.k` and `p.v` as
    broadcast products summed in float32, which inductor compiles to fused bandwidth-bound reductions over the
    static cache (no batched GEMM, no SDPA kernel with a mask). Longer queries (prefill) use eager attention.

    Args: query `(B, H, 1, hd)`, key/value `(B, H, L, hd)`, additive mask `(1, 1, 1, L)`. Returns `(B, 1, H, hd)`.
    """
    if query.shape[2] != 1:
        return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout)[0], None
    scores = (query.float() * key.float()).sum(-1) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, 0]
    probabilities = torch.softmax(scores, dim=-1)
    output = (probabilities[..., None] * value.float()).sum(-2)
    return output.to(query.dtype)[:, None], None


AttentionInterface.register("decode_reduction", decode_reduction_attention)


@dataclasses.dataclass
class Variant:
    """One (attention implementation, qkv layout) model, plus one copy per further compile mode: a model keeps
    one compiled decoder, so modes timed round-robin on one model would rebuild it at every call."""

    name: str
    model: RQTransformerForImageGeneration
    compiled: dict[str, RQTransformerForImageGeneration]


def model_variants(model: RQTransformerForImageGeneration, args: argparse.Namespace) -> list[Variant]:
    """A [`Variant`] per (attention implementation, qkv layout); the first one's model is `model` itself."""
    combinations = list(itertools.product(args.attn_implementation, args.qkv))
    models = [model] + [copy.deepcopy(model) for _ in combinations[1:]]
    variants = []
    for (attention, qkv), variant in zip(combinations, models, strict=True):
        variant.set_attn_implementation(attention)
        if qkv == "fused":
            variant.fuse_qkv_projections()
        modes = args.compile_mode if args.compile else []
        compiled = {mode: variant if i == 0 else copy.deepcopy(variant) for i, mode in enumerate(modes)}
        name = f"{args.dtype}, {attention}" + (", fused qkv" if qkv == "fused" else "")
        variants.append(Variant(name, variant, compiled))
    return variants


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


class Clock:
    """Wall time of calls on one device (synchronised around CUDA work), with an optional overall budget."""

    def __init__(self, device: torch.device, budget: float | None) -> None:
        self.device = device
        self.deadline = None if budget is None else time.perf_counter() + budget

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def time(self, function: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        function()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def best_times(
    methods: list[tuple[str, Callable[[], object]]], clock: Clock, repeats: int
) -> dict[str, tuple[float, float]]:
    """`{label: (best seconds, first-call seconds)}` over `repeats` round-robin rounds after one warm-up call each
    (which also compiles). Methods that would start after the time budget are left out."""
    first = {}
    for label, function in methods:
        if clock.out_of_time():
            print(f"time budget spent: skipping {label}", flush=True)
            continue
        first[label] = clock.time(function)
    best = {label: float("inf") for label in first}
    for _ in range(repeats):
        for label, function in methods:
            if label in best:
                best[label] = min(best[label], clock.time(function))
    return {label: (best[label], first[label]) for label in first}


def released_rqvae(device: torch.device, dtype: torch.dtype):
    """The released 256x256 RQ-VAE shape (8x8x4 codes, K=16384), random weights, in `dtype` except the modules
    that `from_pretrained(torch_dtype=...)` keeps in float32 (the quantizer)."""
    from rq_hf import RQVAEModel

    rqvae = RQVAEModel(sample_size=256).to(device).eval()
    for name, module in rqvae.named_children():
        if name not in rqvae._keep_in_fp32_modules:
            module.to(dtype)
    return rqvae


def best_decode_time(rqvae, codes: torch.Tensor, batch_size: int, clock: Clock, repeats: int) -> float:
    """Best time to decode `codes` `(B, h, w, D)` in chunks of `batch_size`, after a one-chunk warm-up."""
    chunks = codes.split(batch_size)
    rqvae.decode_codes(chunks[0])
    return min(clock.time(lambda: [rqvae.decode_codes(chunk) for chunk in chunks]) for _ in range(repeats))


def profile_call(
    function: Callable[[], object], label: str, device: torch.device, path: Path, batch: int
) -> None:
    """One call of `function` under torch.profiler: the 25 operators with the most self time on the device
    (CUDA) or CPU, printed, and a Chrome trace at `path` with `-batch<B>.json` appended to its stem."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of one call: {label}, batch {batch}")
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=25), flush=True)
    trace = path.with_name(f"{path.stem}-batch{batch}.json")
    profiler.export_chrome_trace(str(trace))
    print(f"Chrome trace: {trace}")


def append_rows(path: Path, rows: list[dict]) -> None:
    """Extend the JSON list in `path` (created if missing) with `rows`; the file is replaced whole."""
    existing = json.loads(path.read_text()) if path.exists() else []
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(existing + rows, indent=1))
    temporary.replace(path)


def print_table(batch: int, results: list[dict]) -> None:
    """One table per batch size; ratios against the fastest original sampler of the same stage."""
    header = (
        f"| {'method':<72} | {'stage':<10} | {'images/s':>9} | {'ms/image':>9} | {'first call s':>12} |"
        f" {'vs original':>11} | {'vs reference':>12} |"
    )
    print(f"\nbatch {batch}")
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for row in results:
        same_stage = [other for other in results if other["stage"] == row["stage"]]
        originals = [
            other["images_per_second"]
            for other in same_stage
            if other["implementation"].startswith("original")
        ]
        references = [
            other["images_per_second"] for other in same_stage if "reference" in other["implementation"]
        ]
        speed = row["images_per_second"]
        ratio_original = f"{speed / max(originals):.2f}x" if originals else "-"
        ratio_reference = f"{speed / references[0]:.2f}x" if references else "-"
        first = f"{row['first_call_seconds']:.1f}" if row.get("first_call_seconds") is not None else "-"
        print(
            f"| {row['implementation']:<72} | {row['stage']:<10} | {speed:>9.2f} | {row['ms_per_image']:>9.2f} |"
            f" {first:>12} | {ratio_original:>11} | {ratio_reference:>12} |",
            flush=True,
        )


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    clock = Clock(device, args.time_budget)
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
    dtype = DTYPES[args.dtype]
    model.to(device=device, dtype=dtype)
    variants = model_variants(model, args)
    # Each variant and compile mode compiles its own decoder: more graphs of one function than dynamo's default.
    torch._dynamo.config.recompile_limit = max(
        torch._dynamo.config.recompile_limit, 2 * len(variants) * len(args.compile_mode)
    )
    rqvae = released_rqvae(device, dtype) if args.end_to_end else None
    rqvae_fp32 = released_rqvae(device, torch.float32) if args.end_to_end and original is not None else None

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    parameters = sum(p.numel() for p in model.parameters())
    shape = "x".join(map(str, args.code_shape))
    print(f"device: {device_name}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(
        f"model: E={args.hidden_size}, {args.spatial_layers}+{args.depth_layers} layers, {args.heads} heads, "
        f"K={args.codebook_size}, codes {shape}, classes {args.num_classes}, {parameters / 1e6:.1f}M parameters",
        flush=True,
    )
    classes = max(args.num_classes, 1)
    for batch in args.batch_size:
        if clock.out_of_time():
            print(f"time budget spent: skipping batch {batch}", flush=True)
            continue
        # Dynamo compiles a second batch size with a dynamic batch dimension; each batch size here gets its own
        # specialised graphs instead, as a caller with one batch size does.
        torch._dynamo.reset()
        condition_ids = torch.randint(classes, (batch, 1), device=device) if args.num_classes > 1 else None
        generator = torch.Generator(device).manual_seed(args.seed)

        def ours(variant=model, condition_ids=condition_ids, batch=batch, generator=generator, **kwargs):
            return lambda: variant.generate(
                condition_ids=condition_ids,
                num_samples=batch,
                top_k=None,
                top_p=None,
                generator=generator,
                **kwargs,
            )

        methods: list[tuple[str, Callable[[], torch.Tensor]]] = []
        originals = {}
        if original is not None:
            empty = torch.zeros(batch, *args.code_shape, dtype=torch.long, device=device)
            cond = (
                torch.zeros(batch, 1, dtype=torch.long, device=device)
                if condition_ids is None
                else condition_ids
            )
            for precision in args.original_precision:
                amp = precision == "fp16"

                def original_sampler(top_k=None, empty=empty, cond=cond, amp=amp) -> torch.Tensor:
                    return transformer.sample(empty, model_aux=model_aux, cond=cond, top_k=top_k, amp=amp)

                label = "original sampler (fp16 autocast)" if amp else "original sampler (fp32)"
                originals[label] = original_sampler
                methods.append((label, original_sampler))

        for variant in variants:
            methods.append((f"rq-hf generate ({variant.name}, static cache)", ours(variant.model)))
            for mode, compiled_model in variant.compiled.items():
                label = "compiled" if mode == "auto" else f"compiled {mode}"
                options = True if mode == "auto" else {"mode": mode, "fullgraph": True}
                methods.append(
                    (f"rq-hf generate ({variant.name}, {label})", ours(compiled_model, compile=options))
                )
        if not args.no_reference:
            methods.append((f"rq-hf uncached reference ({args.dtype})", ours(use_cache=False)))
        with torch.no_grad():
            timings = best_times(methods, clock, args.repeats)
            if args.dtype == "fp32":
                greedy = [
                    variant.model.generate(condition_ids=condition_ids, num_samples=batch, top_k=1)
                    for variant in variants
                ]
                if len(variants) > 1:
                    same = all(torch.equal(codes, greedy[0]) for codes in greedy[1:])
                    print(f"greedy codes of every variant identical: {same}")
                if original is not None and "original sampler (fp32)" in timings:
                    same = torch.equal(greedy[0], originals["original sampler (fp32)"](top_k=1))
                    print(f"greedy codes identical to the original sampler (fp32): {same}")
            decode_seconds = {}
            if rqvae is not None and not clock.out_of_time():
                codes = ours()()
                decode_seconds["rq-hf"] = best_decode_time(
                    rqvae, codes, args.decode_batch_size, clock, args.repeats
                )
                if rqvae_fp32 is not None:
                    decode_seconds["original"] = best_decode_time(rqvae_fp32, codes, 1, clock, 1)

        results = []
        for label, (seconds, first_call) in timings.items():
            common = {
                "config": shape,
                "batch": batch,
                "implementation": label,
                "device": device_name,
                "dtype": args.dtype,
                "parameters": parameters,
            }
            results.append(
                {
                    **common,
                    "stage": "AR",
                    "images_per_second": batch / seconds,
                    "ms_per_image": seconds / batch * 1000,
                    "first_call_seconds": first_call,
                }
            )
            decoder = "original" if label.startswith("original") else "rq-hf"
            if decoder in decode_seconds and "reference" not in label:
                total = seconds + decode_seconds[decoder]
                results.append(
                    {
                        **common,
                        "stage": "end to end",
                        "images_per_second": batch / total,
                        "ms_per_image": total / batch * 1000,
                        "first_call_seconds": None,
                        "decode_ms_per_image": decode_seconds[decoder] / batch * 1000,
                    }
                )
        print_table(batch, results)
        if args.json_output is not None and results:
            append_rows(args.json_output, results)
        ours_timed = {label: timings[label][0] for label in timings if label.startswith("rq-hf generate")}
        if args.profile is not None and ours_timed:
            fastest = min(ours_timed, key=ours_timed.get)
            with torch.no_grad():
                profile_call(dict(methods)[fastest], fastest, device, args.profile, batch)


if __name__ == "__main__":
    main()
