"""Sampling for `RQTransformerForImageGeneration`, in the shape of gpt-fast's `generate.py`.

A prefill of the condition (and prefix) tokens, then one decode step per position: the spatial transformer reads
the previous position's codes through static key/value caches, and the depth transformer samples the D codes of
the position with its own static cache. Code-embedding tables (projection of every codebook entry) are computed
once per call, so a step embeds the new codes with a gather. Random numbers are drawn outside the step from the
caller's generator, the step itself never waits for the host, and NaN logits are reported once at the end.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import torch
import torch.nn.functional as F

from .modeling_rqtransformer import RQTransformerForImageGeneration, causal_attention_mask


def default_compile_options(device: torch.device) -> dict:
    """
    The `torch.compile` options of `generate(compile=True)` on `device`. GPU: CUDA graphs over the one graph of a
    step (`mode="reduce-overhead"`). CPU: inductor's C++ GEMM templates, chosen per matrix product by autotuning
    against MKL (for the few-row products of a decoding step they took 2.7-3.7x less time than MKL in inductor's
    autotuning tables on this project's 2-core CPU). They need the weights as compile-time constants (`freezing`:
    the graph holds a repacked copy of them, so the decoder recompiles when the weights change), and autotuning
    makes the first call slower; its tables are not printed.
    """
    if device.type != "cpu":
        return {"mode": "reduce-overhead", "fullgraph": True}
    quiet = {"autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
    return {"fullgraph": True, "options": {"freezing": True, "max_autotune": True, **quiet}}


def freezes_weights(compile_options: dict) -> bool:
    """Whether `torch.compile(**compile_options)` bakes parameters and buffers into the graph as constants."""
    from torch._inductor import config as inductor_config

    return bool(compile_options.get("options", {}).get("freezing", inductor_config.freezing))


def _weights_state(model: torch.nn.Module) -> list[tuple[torch.Tensor, int, int]]:
    """Each parameter and buffer with its in-place version counter and data address (changed by `.data = ...`)."""
    return [
        (tensor, tensor._version, tensor.data_ptr())
        for tensor in itertools.chain(model.parameters(), model.buffers())
    ]


def _same_weights(
    state: list[tuple[torch.Tensor, int, int]], current: list[tuple[torch.Tensor, int, int]]
) -> bool:
    return len(state) == len(current) and all(
        old is new and old_version == new_version and old_address == new_address
        for (old, old_version, old_address), (new, new_version, new_address) in zip(
            state, current, strict=True
        )
    )


def _own_code_copy(method: types.MethodType) -> types.MethodType:
    """
    `method` rebound to a copy of its function with its own code object. Dynamo keeps compiled graphs per code
    object; graphs that hold frozen weights must go with their decoder, not stay in the cache all decoders share
    (where they would keep old weight copies alive and count towards dynamo's recompile limit).
    """
    function = method.__func__
    copy = types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    return types.MethodType(copy, method.__self__)


def sample_from_logits(
    logits: torch.Tensor,
    uniform_noise: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """
    Draw one index per row: `logits / temperature`, keep the `top_k` largest (ties at the k-th value kept),
    softmax, keep the smallest set of most likely entries whose mass reaches `top_p` (the most likely one always
    kept), then sample with the exponential race `argmax(p / E)`, `E = -log(uniform_noise)`.

    Args:
        logits: `(N, K)` float32.
        uniform_noise: `(N, K)` uniform in [0, 1); fixed noise gives a fixed result.
        temperature: > 0.
        top_k: `None` to skip, else in [1, K].
        top_p: `None` to skip, else in (0, 1).
    Returns:
        `(N,)` long.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None:
        threshold = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = F.pad(sorted_probs.cumsum(dim=-1)[:, :-1], (1, 0))
        remove_sorted = mass_before >= top_p
        probs = probs.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), 0.0)
    exponential = -torch.log(uniform_noise.clamp_min(torch.finfo(uniform_noise.dtype).tiny))
    return torch.argmax(probs / exponential, dim=-1)


@dataclass(frozen=True)
class SamplingSettings:
    """Resolved sampling options; `top_k` / `top_p` hold one entry per depth, `None` where disabled."""

    temperature: float
    top_k: tuple[int | None, ...]
    top_p: tuple[float | None, ...]
    guidance_scale: float

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0


def _per_depth(name: str, value: object, depth: int, check: Callable[[object], bool], expected: str) -> list:
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) == 1:
        values = values * depth
    if len(values) != depth or not all(check(v) for v in values):
        raise ValueError(f"{name}: expected {expected} or a list of {depth} of them, got {value!r}")
    return values


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def resolve_sampling_settings(
    model: RQTransformerForImageGeneration,
    temperature: float | None,
    top_k: int | Sequence[int] | None,
    top_p: float | Sequence[float] | None,
    guidance_scale: float | None,
) -> SamplingSettings:
    """Fill `None` from `model.generation_config` (then: 1, no top-k, no top-p, no guidance) and validate."""
    generation_config = model.generation_config
    config = model.config
    depth = config.code_shape[2]
    defaults = {"temperature": 1.0, "top_k": None, "top_p": None, "guidance_scale": 1.0}
    for name in list(defaults):
        if getattr(generation_config, name, None) is not None:
            defaults[name] = getattr(generation_config, name)
    temperature = defaults["temperature"] if temperature is None else temperature
    top_k = defaults["top_k"] if top_k is None else top_k
    top_p = defaults["top_p"] if top_p is None else top_p
    guidance_scale = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
    if not _is_real(temperature) or temperature <= 0:
        raise ValueError(f"temperature: expected a float > 0, got {temperature!r}")
    if not _is_real(guidance_scale):
        raise ValueError(f"guidance_scale: expected a finite float, got {guidance_scale!r}")
    if guidance_scale != 1.0 and config.null_condition_id is None:
        raise ValueError(
            f"guidance_scale: expected 1.0 for a model without config.null_condition_id, got {guidance_scale!r}"
        )
    top_ks: list[int | None] = [None] * depth
    if top_k is not None:
        top_ks = _per_depth(
            "top_k",
            top_k,
            depth,
            lambda v: isinstance(v, Integral) and not isinstance(v, bool) and v >= 1,
            "an int >= 1",
        )
        top_ks = [int(k) if k < size else None for k, size in zip(top_ks, config.vocab_size, strict=True)]
    top_ps: list[float | None] = [None] * depth
    if top_p is not None:
        top_ps = _per_depth("top_p", top_p, depth, lambda v: _is_real(v) and 0 < v <= 1, "a float in (0, 1]")
        top_ps = [float(p) if p < 1 else None for p in top_ps]
    return SamplingSettings(float(temperature), tuple(top_ks), tuple(top_ps), float(guidance_scale))


def pick_codes(
    logits: torch.Tensor, uniform_noise: torch.Tensor, settings: SamplingSettings, depth: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Guidance and sampling of one depth. `logits` `(B', K_d)` float32 with `B' = 2B` under guidance (condition rows
    first), `uniform_noise` `(B, K_d)`. Returns the codes `(B',)` (shared by both halves) and a NaN flag `()`.
    """
    if settings.guided:
        conditional, unconditional = logits.chunk(2)
        logits = unconditional + settings.guidance_scale * (conditional - unconditional)
    codes = sample_from_logits(
        logits, uniform_noise, settings.temperature, settings.top_k[depth], settings.top_p[depth]
    )
    has_nan = torch.isnan(logits).any()
    return (torch.cat([codes, codes]) if settings.guided else codes), has_nan


class StaticCacheDecoder:
    """
    Decoding state of one model for a fixed batch size: key/value caches of both transformers, preallocated to
    their final length, attention masks, and the code-embedding tables, all at fixed addresses (CUDA graphs).
    """

    def __init__(self, model: RQTransformerForImageGeneration, batch_size: int) -> None:
        config = model.config
        parameter = model.spatial_position_embeddings
        device, dtype = parameter.device, parameter.dtype
        height, width, depth = config.code_shape
        self.model = model
        self.key = (batch_size, device, dtype)
        self.depth = depth
        self.condition_length = config.condition_sequence_length
        spatial_length = self.condition_length + height * width - 1

        def caches(layers, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            shapes = [
                (batch_size, layer.self_attn.num_heads, length, layer.self_attn.head_dim) for layer in layers
            ]
            return [(parameter.new_zeros(shape), parameter.new_zeros(shape)) for shape in shapes]

        self.spatial_caches = caches(model.spatial_layers, spatial_length)
        self.depth_caches = caches(model.depth_layers, depth)
        self.spatial_mask = causal_attention_mask(
            torch.arange(spatial_length, device=device), spatial_length, dtype
        )
        depth_mask = causal_attention_mask(torch.arange(depth, device=device), depth, dtype)
        self.depth_masks = [depth_mask[:, :, d : d + 1] for d in range(depth)]
        self.depth_positions = [torch.tensor([d], device=device) for d in range(depth)]

        self.spatial_table: torch.Tensor | None = None
        self.refresh_tables()
        self.settings: SamplingSettings | None = None
        self.step = self.decode_step
        self.compile_options: dict | None = None
        self.frozen_weights: list[tuple[torch.Tensor, int, int]] | None = None

    @torch.no_grad()
    def refresh_tables(self) -> None:
        """Compute the code tables from the current weights (in place after the first call: fixed addresses)."""
        spatial_table, spatial_offsets = self.model.code_embeddings.spatial_table()
        depth_table, depth_offsets, depth_bias = self.model.code_embeddings.depth_table()
        if self.spatial_table is None:
            device = spatial_table.device
            self.spatial_table, self.depth_table = (
                spatial_table.detach().clone(),
                depth_table.detach().clone(),
            )
            self.depth_bias = None if depth_bias is None else depth_bias.detach().clone()
            self.spatial_offsets = torch.tensor(spatial_offsets, device=device)
            self.depth_offsets = torch.tensor(depth_offsets, device=device)
            return
        self.spatial_table.copy_(spatial_table)
        self.depth_table.copy_(depth_table)
        if depth_bias is not None:
            self.depth_bias.copy_(depth_bias)

    def compile(self, **options) -> None:
        """
        Compile the decode step with `torch.compile(**options)`; caches and tables get static addresses. With
        `freezing` the graphs hold the current weights: they are recorded (see `weights_unchanged`), the step gets a
        dynamo cache of its own, and every call runs with inductor's global `freezing` flag set, which dynamo reads
        when it traces (a `torch.compile(options=...)` entry alone reaches inductor only).
        """
        for tensor in self._static_tensors():
            torch._dynamo.mark_static_address(tensor)
        self.compile_options = options
        if not freezes_weights(options):
            self.step = torch.compile(self.decode_step, **options)
            return
        from torch._inductor import config as inductor_config

        self.frozen_weights = _weights_state(self.model)
        compiled_step = torch.compile(_own_code_copy(self.decode_step), **options)

        def step_with_frozen_weights(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with inductor_config.patch(freezing=True):
                return compiled_step(*args)

        self.step = step_with_frozen_weights

    def weights_unchanged(self) -> bool:
        """False when the step was compiled with frozen weights that have changed since (in place or replaced)."""
        return self.frozen_weights is None or _same_weights(self.frozen_weights, _weights_state(self.model))

    def _static_tensors(self) -> list[torch.Tensor]:
        tensors = [self.spatial_table, self.depth_table, self.spatial_mask]
        tensors += [tensor for cache in self.spatial_caches + self.depth_caches for tensor in cache]
        return tensors + ([] if self.depth_bias is None else [self.depth_bias])

    def prefill(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the spatial transformer on `(B, L, E)` inputs from cache index 0; returns the last output `(B, E)`."""
        positions = torch.arange(inputs.shape[1], device=inputs.device)
        mask = self.spatial_mask[:, :, : inputs.shape[1]]
        hidden_states = inputs
        for layer, cache in zip(self.model.spatial_layers, self.spatial_caches, strict=True):
            hidden_states = layer(hidden_states, mask, cache, positions)
        return hidden_states[:, -1]

    def sample_position(
        self, spatial_context: torch.Tensor, uniform_noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Sample the D codes of one position from its spatial output `(B', E)`; `uniform_noise` `(D, B, K_max)`.
        Returns codes `(B', D)` and a NaN flag `()`.
        """
        model, settings = self.model, self.settings
        position_embeddings = model.depth_position_embeddings
        hidden_states = spatial_context + position_embeddings[0]
        context = self.depth_bias
        codes, has_nan = [], torch.zeros((), dtype=torch.bool, device=spatial_context.device)
        for d in range(self.depth):
            states = hidden_states[:, None]
            for layer, cache in zip(model.depth_layers, self.depth_caches, strict=True):
                states = layer(states, self.depth_masks[d], cache, self.depth_positions[d])
            logits = model.classifier.forward_depth(states[:, 0], d).float()
            code, nan_here = pick_codes(logits, uniform_noise[d, :, : logits.shape[-1]], settings, d)
            codes.append(code)
            has_nan = has_nan | nan_here
            if d + 1 < self.depth:
                row = F.embedding(code + self.depth_offsets[d], self.depth_table)
                if context is not None:
                    context = context + row
                    row = context
                hidden_states = row + position_embeddings[d + 1]
        return torch.stack(codes, dim=1), has_nan

    def decode_step(
        self, previous_codes: torch.Tensor, position: torch.Tensor, uniform_noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Feed the codes `(B', D)` of position t - 1 at cache index `position` `(1,)` (= Lc + t - 1) and sample the
        codes of position t. Returns codes `(B', D)` and a NaN flag `()`.
        """
        model = self.model
        embeddings = F.embedding(previous_codes + self.spatial_offsets, self.spatial_table).sum(dim=1)
        hidden_states = (embeddings + model.spatial_position_embeddings[position - self.condition_length])[
            :, None
        ]
        mask = self.spatial_mask.index_select(2, position)
        for layer, cache in zip(model.spatial_layers, self.spatial_caches, strict=True):
            hidden_states = layer(hidden_states, mask, cache, position)
        return self.sample_position(hidden_states[:, 0], uniform_noise)


def _decoder_for(
    model: RQTransformerForImageGeneration, batch_size: int, compile_options: dict | None
) -> StaticCacheDecoder:
    """A fresh decoder, or with `compile_options` the compiled one kept on the model (rebuilt for a new batch size,
    device, dtype or new options, and after a weight change when the compiled step froze the weights)."""
    if compile_options is None:
        return StaticCacheDecoder(model, batch_size)
    parameter = model.spatial_position_embeddings
    decoder = getattr(model, "_compiled_decoder", None)
    if (
        decoder is None
        or decoder.key != (batch_size, parameter.device, parameter.dtype)
        or decoder.compile_options != compile_options
        or not decoder.weights_unchanged()
    ):
        decoder = StaticCacheDecoder(model, batch_size)
        decoder.compile(**compile_options)
        model._compiled_decoder = decoder
    else:
        decoder.refresh_tables()
    return decoder


def _first_step_guards_only() -> contextlib.AbstractContextManager:
    """
    Context for the decode steps after the first of one `generate` call. Those steps run the same compiled graph on
    the same static tensors with the same shapes and settings, so dynamo's full guard check (thousands of guards for
    the released 48-layer models: milliseconds of host time per step) passed on the first step already; only the
    guards that tell cached graphs apart run (`torch.compiler.set_stance(skip_guard_eval_unsafe=True)`). Applied only
    under the default stance (a caller's "force_eager" and the like are kept) and where torch offers it (>= 2.7).
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    stance = getattr(torch._dynamo.eval_frame, "_stance", None)
    supported = (
        set_stance is not None and "skip_guard_eval_unsafe" in inspect.signature(set_stance).parameters
    )
    if not supported or stance is None or stance.stance != "default" or stance.skip_guard_eval_unsafe:
        return contextlib.nullcontext()
    return set_stance("default", skip_guard_eval_unsafe=True)


def _cached_codes(
    model: RQTransformerForImageGeneration,
    codes: torch.Tensor,
    start: int,
    condition_ids: torch.Tensor,
    settings: SamplingSettings,
    draw_noise,
    compile_options: dict | None,
) -> torch.Tensor:
    """Fill `codes` `(B', T, D)` from position `start` on with the static-cache decoder; returns the NaN flag."""
    length = codes.shape[1]
    decoder = _decoder_for(model, codes.shape[0], compile_options)
    decoder.settings = settings
    prefix = (
        model.code_embeddings.spatial_inputs(codes[:, :start]) + model.spatial_position_embeddings[:start]
    )
    spatial_context = decoder.prefill(torch.cat([model.condition_inputs(condition_ids), prefix], dim=1))
    codes[:, start], has_nan = decoder.sample_position(spatial_context, draw_noise())
    positions = torch.arange(length, device=codes.device) + decoder.condition_length

    def step(t: int) -> None:
        nonlocal has_nan
        if decoder.compile_options is not None:
            torch.compiler.cudagraph_mark_step_begin()
        codes[:, t], nan_here = decoder.step(codes[:, t - 1], positions[t - 1 : t], draw_noise())
        has_nan = has_nan | nan_here

    if start + 1 < length:
        step(start + 1)
    with _first_step_guards_only() if decoder.compile_options is not None else contextlib.nullcontext():
        for t in range(start + 2, length):
            step(t)
    return has_nan


def _reference_codes(
    model: RQTransformerForImageGeneration,
    codes: torch.Tensor,
    start: int,
    condition_ids: torch.Tensor,
    settings: SamplingSettings,
    draw_noise,
) -> torch.Tensor:
    """Fill `codes` `(B', T, D)` from `start` on with one teacher-forced forward per code; returns the NaN flag."""
    height, width, depth = model.config.code_shape
    has_nan = torch.zeros((), dtype=torch.bool, device=codes.device)
    for t in range(start, codes.shape[1]):
        uniform_noise = draw_noise()
        for d in range(depth):
            logits = model(codes.view(-1, height, width, depth), condition_ids).logits
            logits = logits[:, t // width, t % width, d, : model.config.vocab_size[d]].float()
            codes[:, t, d], nan_here = pick_codes(
                logits, uniform_noise[d, :, : logits.shape[-1]], settings, d
            )
            has_nan = has_nan | nan_here
    return has_nan


def generate_codes(
    model: RQTransformerForImageGeneration,
    condition_ids: torch.Tensor | None = None,
    num_samples: int | None = None,
    temperature: float | None = None,
    top_k: int | Sequence[int] | None = None,
    top_p: float | Sequence[float] | None = None,
    guidance_scale: float | None = None,
    prefix_codes: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    compile: bool | dict = False,
) -> torch.Tensor:
    """Implementation of [`RQTransformerForImageGeneration.generate`]; see there for the arguments."""
    config = model.config
    height, width, depth = config.code_shape
    length = height * width
    device = model.spatial_position_embeddings.device
    settings = resolve_sampling_settings(model, temperature, top_k, top_p, guidance_scale)
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache: expected a bool, got {type(use_cache).__name__}")
    if not isinstance(compile, (bool, dict)):
        raise TypeError(
            f"compile: expected a bool or a dict of torch.compile options, got {type(compile).__name__}"
        )
    if compile is not False and not use_cache:
        raise ValueError(
            "compile: expected False with use_cache=False (only the cached decoder compiles), got it set"
        )
    if generator is not None and (
        not isinstance(generator, torch.Generator) or generator.device.type != device.type
    ):
        raise ValueError(
            f"generator: expected a torch.Generator on {device.type}, got "
            f"{generator.device if isinstance(generator, torch.Generator) else type(generator).__name__}"
        )
    if num_samples is not None and (
        not isinstance(num_samples, Integral) or isinstance(num_samples, bool) or num_samples < 1
    ):
        raise ValueError(f"num_samples: expected an int >= 1, got {num_samples!r}")

    prefix = None if prefix_codes is None else model.check_codes(prefix_codes, "prefix_codes", length)
    sizes = {
        "num_samples": num_samples,
        "condition_ids": None if not isinstance(condition_ids, torch.Tensor) else condition_ids.shape[0],
        "prefix_codes": None if prefix is None else prefix.shape[0],
    }
    given = {name: size for name, size in sizes.items() if size is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"num_samples: expected one batch size, got {given}")
    if not given:
        raise ValueError(
            "num_samples: expected an int >= 1 when neither condition_ids nor prefix_codes is given, got None"
        )
    batch_size = int(next(iter(given.values())))
    condition_ids = model.prepare_condition_ids(condition_ids, batch_size)
    model.check_codebook()

    codes = torch.zeros(batch_size, length, depth, dtype=torch.long, device=device)
    start = 0
    if prefix is not None:
        start = prefix.shape[1]
        codes[:, :start] = prefix.to(device)
    if start == length:
        return codes.view(batch_size, height, width, depth)
    if settings.guided:
        condition_ids = torch.cat([condition_ids, torch.full_like(condition_ids, config.null_condition_id)])
        codes = torch.cat([codes, codes])

    noise_shape = (depth, batch_size, max(config.vocab_size))

    def draw_noise() -> torch.Tensor:
        return torch.rand(noise_shape, generator=generator, device=device)

    was_training = model.training
    model.eval()
    try:
        if use_cache:
            options = compile if isinstance(compile, dict) else None
            if compile is True:
                options = default_compile_options(device)
            has_nan = _cached_codes(model, codes, start, condition_ids, settings, draw_noise, options)
        else:
            has_nan = _reference_codes(model, codes, start, condition_ids, settings, draw_noise)
    finally:
        model.train(was_training)
    if bool(has_nan):
        raise FloatingPointError("generate: the model produced NaN logits (check the weights and the dtype)")
    return codes[:batch_size].view(batch_size, height, width, depth)
