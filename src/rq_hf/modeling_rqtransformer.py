"""PyTorch RQ-Transformer (Lee et al., CVPR 2022): autoregressive prior over residual-quantized code maps.

A spatial transformer reads the code map in raster order after the condition tokens; at each position a depth
transformer predicts the D residual codes one after the other. The model keeps its own frozen copy of the RQ-VAE
codebooks, so it trains and generates without the RQ-VAE. Generation lives in `generation_rqtransformer.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_rqtransformer import RQTransformerConfig


@dataclass
class RQTransformerOutput(ModelOutput):
    """
    Output of [`RQTransformerForImageGeneration`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            The training loss: `code_loss`, or for models with a condition classifier
            `(1 - w) * code_loss + w * condition_loss` with `w = config.condition_loss_weight`.
        logits (`torch.FloatTensor` of shape `(B, h, w, D, K)`):
            Logits of code (h, w, d) given the condition, all earlier positions and the codes of depths < d at
            the same position. `K` is the largest vocab size; entries past depth d's own size are `-inf`.
        condition_logits (`torch.FloatTensor` of shape `(B, Lc - 1, condition_vocab_size)`, *optional*):
            Logits of condition tokens 1..Lc-1 given the earlier ones (models with `condition_length > 1`).
        code_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Mean cross-entropy of the codes against hard `labels` or `soft_labels`.
        condition_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Mean cross-entropy of condition tokens 1..Lc-1 (models with a condition classifier, given labels).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    condition_logits: torch.FloatTensor | None = None
    code_loss: torch.FloatTensor | None = None
    condition_loss: torch.FloatTensor | None = None


def offsets_of(sizes: Sequence[int], shared: bool) -> list[int]:
    """Row offset of each depth in a table that stacks one block per depth (all 0 for a shared table)."""
    return [0] * len(sizes) if shared else [0, *accumulate(sizes)][:-1]


def causal_attention_mask(query_positions: torch.Tensor, key_length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask `(1, 1, Lq, key_length)`: 0 where key index <= query position, the dtype's minimum elsewhere."""
    keys = torch.arange(key_length, device=query_positions.device)
    blocked = keys[None, :] > query_positions[:, None]
    mask = torch.zeros(blocked.shape, dtype=dtype, device=query_positions.device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)[None, None]


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention on `(B, H, L, hd)` tensors; returns `(B, L, H, hd)` outputs and the weights."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class RQTransformerAttention(nn.Module):
    """
    Causal multi-head self-attention with separate query/key/value/output projections. For inference,
    [`fuse_qkv_projections`] stacks the first three into one matrix product (as diffusers' attention does).
    """

    def __init__(self, config: RQTransformerConfig, num_heads: int) -> None:
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = config.hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, hidden, bias=bias)
        self.k_proj = nn.Linear(hidden, hidden, bias=bias)
        self.v_proj = nn.Linear(hidden, hidden, bias=bias)
        self.o_proj = nn.Linear(hidden, hidden, bias=bias)
        self.register_buffer("fused_qkv_weight", None, persistent=False)
        self.register_buffer("fused_qkv_bias", None, persistent=False)

    @torch.no_grad()
    def fuse_qkv_projections(self) -> None:
        """Stack the query/key/value weights into one `(3E, E)` projection (a snapshot, not saved; inference)."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        self.fused_qkv_weight = torch.cat([projection.weight for projection in projections])
        if self.q_proj.bias is not None:
            self.fused_qkv_bias = torch.cat([projection.bias for projection in projections])

    def unfuse_qkv_projections(self) -> None:
        """Drop the fused projection: `forward` uses `q_proj`, `k_proj`, `v_proj` again."""
        self.fused_qkv_weight = None
        self.fused_qkv_bias = None

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(B, L, E)` -> query, key, value, each `(B, H, L, hd)`: three projections, or one when fused."""
        batch, length, _ = hidden_states.shape
        if self.fused_qkv_weight is None:
            shape = (batch, length, self.num_heads, self.head_dim)
            projections = (self.q_proj, self.k_proj, self.v_proj)
            return tuple(projection(hidden_states).view(shape).transpose(1, 2) for projection in projections)
        if self.training:
            raise RuntimeError(
                "fused_qkv_weight: expected unfused projections in training mode (the fused weight is a "
                "snapshot that gets no gradient), got fused ones; call unfuse_qkv_projections() first"
            )
        qkv = F.linear(hidden_states, self.fused_qkv_weight, self.fused_qkv_bias)
        return qkv.view(batch, length, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache_position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: `(B, L, E)`.
            attention_mask: additive `(1, 1, L, L_kv)`, or `None` for a causal mask over `L` (no cache).
            kv_cache: preallocated `(key, value)`, each `(B, H, L_max, hd)`, written in place at `cache_position`.
            cache_position: `(L,)` long, the sequence indices of `hidden_states` in the cache.
        Returns:
            `(B, L, E)`.
        """
        batch, length, _ = hidden_states.shape
        query, key, value = self.project_qkv(hidden_states)
        if kv_cache is not None:
            key_cache, value_cache = kv_cache
            key_cache.index_copy_(2, cache_position, key)
            value_cache.index_copy_(2, cache_position, value)
            key, value = key_cache, value_cache

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=attention_mask is None,
        )
        return self.o_proj(attn_output.reshape(batch, length, -1))


class RQTransformerMLP(nn.Module):
    """`fc2(act(fc1(x)))` with a `intermediate_size` hidden width."""

    def __init__(self, config: RQTransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class RQTransformerBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: `x + drop(attn(ln(x)))`, then `x + drop(mlp(ln(x)))`."""

    def __init__(self, config: RQTransformerConfig, num_heads: int) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = RQTransformerAttention(config, num_heads)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = RQTransformerMLP(config)
        self.dropout = nn.Dropout(config.residual_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache_position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`(B, L, E) -> (B, L, E)`; see [`RQTransformerAttention.forward`] for the other arguments."""
        attn_output = self.self_attn(
            self.input_layernorm(hidden_states), attention_mask, kv_cache, cache_position
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states)))


class RQTransformerCodeEmbeddings(nn.Module):
    """
    Inputs of both transformers from code stacks `(..., D)`.

    Holds the frozen RQ-VAE codebook copy (`codebook`, `(K, C)` when shared, else the D codebooks stacked to
    `(sum K_d, C)`), the linear `input_projection` / `head_projection` applied to code embeddings, and the
    learned `token_embeddings` used when a transformer does not read the codebook.
    """

    def __init__(self, config: RQTransformerConfig) -> None:
        super().__init__()
        sizes = config.vocab_size
        self.vocab_sizes = list(sizes)
        self.codebook_dim = config.codebook_dim
        self.shared_codebook = config.shared_codebook
        self.cumulative = config.head_emb_vqvae and config.cumsum_depth_ctx
        self.codebook_offsets = offsets_of(sizes, config.shared_codebook)
        self.token_offsets = offsets_of(sizes, config.shared_tok_emb)
        hidden, dim = config.hidden_size, config.codebook_dim
        if config.input_emb_vqvae or config.head_emb_vqvae:
            rows = sizes[0] if config.shared_codebook else sum(sizes)
            self.register_buffer("codebook", torch.zeros(rows, dim))
        else:
            self.codebook = None
        self.input_projection = nn.Linear(dim, hidden) if config.input_emb_vqvae else None
        self.head_projection = nn.Linear(dim, hidden) if config.head_emb_vqvae else None
        if config.input_emb_vqvae and config.head_emb_vqvae:
            self.token_embeddings = None
        else:
            self.token_embeddings = nn.Embedding(sizes[0] if config.shared_tok_emb else sum(sizes), hidden)

    def _rows(self, codes: torch.Tensor, offsets: list[int]) -> torch.Tensor:
        return codes + codes.new_tensor(offsets[: codes.shape[-1]])

    def codebook_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook embeddings `(..., d, C)` of the codes `(..., d)` of depths 0..d-1."""
        return F.embedding(self._rows(codes, self.codebook_offsets), self.codebook)

    def spatial_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """`(..., D) -> (..., E)`: sum over depths of the projected (or learned) code embeddings."""
        if self.input_projection is not None:
            return self.input_projection(self.codebook_vectors(codes)).sum(-2)
        return self.token_embeddings(self._rows(codes, self.token_offsets)).sum(-2)

    def depth_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """`(..., D) -> (..., D - 1, E)`: the depth transformer's inputs at depths 1..D-1 (no position embedding)."""
        previous = codes[..., :-1]
        if self.head_projection is None:
            return self.token_embeddings(self._rows(previous, self.token_offsets))
        vectors = self.codebook_vectors(previous)
        return self.head_projection(vectors.cumsum(-2) if self.cumulative else vectors)

    def spatial_table(self) -> tuple[torch.Tensor, list[int]]:
        """`(table (N, E), offsets)` with `spatial_inputs(codes) == table[codes + offsets].sum(-2)`."""
        if self.input_projection is not None:
            return self.input_projection(
                self.codebook.to(self.input_projection.weight.dtype)
            ), self.codebook_offsets
        return self.token_embeddings.weight, self.token_offsets

    def depth_table(self) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
        """
        `(table (N, E), offsets, bias)` for the depth inputs: row `table[code + offsets[d]]` is the contribution
        of a depth-d code. With `bias` (cumulative context) the input of depth d is `bias + sum_{d' < d}` rows,
        else it is the row of depth d - 1 alone.
        """
        if self.head_projection is None:
            return self.token_embeddings.weight, self.token_offsets, None
        codebook = self.codebook.to(self.head_projection.weight.dtype)
        if self.cumulative:
            return (
                F.linear(codebook, self.head_projection.weight),
                self.codebook_offsets,
                self.head_projection.bias,
            )
        return self.head_projection(codebook), self.codebook_offsets, None


class RQTransformerDepthwiseLinear(nn.Module):
    """One linear map per depth: `(..., D, in) -> (..., D, out)`, weight stored `(D, in, out)` (not transposed)."""

    def __init__(self, num_depths: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_depths, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_depths, out_features))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...di,dio->...do", hidden_states, self.weight) + self.bias


class RQTransformerClassifier(nn.Module):
    """LayerNorm, then one linear map shared by all depths (`shared_cls_emb`) or one per depth."""

    def __init__(self, config: RQTransformerConfig) -> None:
        super().__init__()
        self.vocab_sizes = list(config.vocab_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if config.shared_cls_emb:
            self.linear = nn.Linear(config.hidden_size, self.vocab_sizes[0])
        else:
            self.linear = RQTransformerDepthwiseLinear(
                len(self.vocab_sizes), config.hidden_size, max(self.vocab_sizes)
            )

    def invalid_logits(self, device: torch.device) -> torch.Tensor | None:
        """`(D, K)` bool, True past each depth's vocab size; `None` when all depths have the same size."""
        if len(set(self.vocab_sizes)) == 1:
            return None
        sizes = torch.tensor(self.vocab_sizes, device=device)
        return torch.arange(max(self.vocab_sizes), device=device)[None, :] >= sizes[:, None]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(..., D, E) -> (..., D, K)` logits, `-inf` past each depth's vocab size."""
        logits = self.linear(self.norm(hidden_states))
        invalid = self.invalid_logits(logits.device)
        return logits if invalid is None else logits.masked_fill(invalid, float("-inf"))

    def forward_depth(self, hidden_states: torch.Tensor, depth: int) -> torch.Tensor:
        """`(N, E) -> (N, K_depth)` logits of one depth (only its valid entries)."""
        hidden_states = self.norm(hidden_states)
        if isinstance(self.linear, nn.Linear):
            return self.linear(hidden_states)
        size = self.vocab_sizes[depth]
        return torch.addmm(self.linear.bias[depth, :size], hidden_states, self.linear.weight[depth, :, :size])


class RQTransformerConditionClassifier(nn.Module):
    """LayerNorm + linear predicting the next condition token (text-to-image models)."""

    def __init__(self, config: RQTransformerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.linear = nn.Linear(config.hidden_size, config.condition_vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(hidden_states))


class RQTransformerPreTrainedModel(PreTrainedModel):
    """
    Weight initialisation: the original never initialised its linears explicitly (PyTorch defaults) and drew the
    position embeddings from N(0, 0.02). Here every linear, embedding, per-depth classifier and position embedding
    is drawn GPT-2 style from N(0, `initializer_range`) with zero biases; LayerNorms start at (1, 0); the codebook
    copy starts at zero until [`~RQTransformerForImageGeneration.set_codebook_embeddings`] fills it.
    """

    config_class = RQTransformerConfig
    config: RQTransformerConfig
    base_model_prefix = "rq_transformer"
    main_input_name = "codes"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["RQTransformerBlock"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, RQTransformerDepthwiseLinear):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.bias)
        elif isinstance(module, RQTransformerCodeEmbeddings) and module.codebook is not None:
            init.zeros_(module.codebook)
        elif isinstance(module, RQTransformerForImageGeneration):
            for parameter in (
                module.condition_position_embeddings,
                module.spatial_position_embeddings,
                module.depth_position_embeddings,
            ):
                init.normal_(parameter, mean=0.0, std=std)


class RQTransformerForImageGeneration(RQTransformerPreTrainedModel, GenerationMixin):
    """
    RQ-Transformer for class-conditional, text-conditional or unconditional image code generation.

    Sequence layout: condition tokens `(B, Lc)` then the `h * w` positions in raster order. The spatial input
    at position t is `pos(t) + sum_d emb_d(code[t, d])`, shifted right behind the condition embeddings; the
    spatial output for position t is read at index `Lc - 1 + t`. The depth transformer's input at depth 0 is that
    output, at depth d > 0 the embedding of the codes of depths < d (see [`RQTransformerCodeEmbeddings`]), plus a
    depth position embedding.
    """

    def __init__(self, config: RQTransformerConfig) -> None:
        super().__init__(config)
        height, width, depth = config.code_shape
        hidden = config.hidden_size
        self.condition_embeddings = nn.Embedding(config.num_condition_embeddings, hidden)
        self.condition_position_embeddings = nn.Parameter(
            torch.zeros(config.condition_sequence_length, hidden)
        )
        self.spatial_position_embeddings = nn.Parameter(torch.zeros(height * width, hidden))
        self.depth_position_embeddings = nn.Parameter(torch.zeros(depth, hidden))
        self.code_embeddings = RQTransformerCodeEmbeddings(config)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.spatial_layers = nn.ModuleList(
            RQTransformerBlock(config, config.num_spatial_heads) for _ in range(config.num_spatial_layers)
        )
        self.depth_layers = nn.ModuleList(
            RQTransformerBlock(config, config.num_depth_heads) for _ in range(config.num_depth_layers)
        )
        self.classifier = RQTransformerClassifier(config)
        self.condition_classifier = (
            RQTransformerConditionClassifier(config) if config.condition_sequence_length > 1 else None
        )
        self.post_init()

    # ---- codebook copy -------------------------------------------------------------------------------------

    @torch.no_grad()
    def set_codebook_embeddings(self, codebooks: Sequence[torch.Tensor]) -> None:
        """
        Copy the RQ-VAE codebooks into the model (a frozen buffer, saved with the model).

        Args:
            codebooks: one float tensor `(K_d, C)` per depth, padding row already dropped (with a shared
                codebook, D references to the same tensor).
        """
        embeddings = self.code_embeddings
        if embeddings.codebook is None:
            raise ValueError(
                "codebooks: expected none for a model with input_emb_vqvae and head_emb_vqvae both false, got "
                f"{len(codebooks)} tensors"
            )
        depth = len(embeddings.vocab_sizes)
        if not isinstance(codebooks, Sequence) or len(codebooks) != depth:
            raise ValueError(f"codebooks: expected a list of {depth} tensors, got {type(codebooks).__name__}")
        for index, (codebook, size) in enumerate(zip(codebooks, embeddings.vocab_sizes, strict=True)):
            if not isinstance(codebook, torch.Tensor) or not codebook.is_floating_point():
                raise TypeError(f"codebooks[{index}]: expected a float tensor, got {type(codebook).__name__}")
            if tuple(codebook.shape) != (size, embeddings.codebook_dim):
                raise ValueError(
                    f"codebooks[{index}]: expected shape ({size}, {embeddings.codebook_dim}), "
                    f"got {tuple(codebook.shape)}"
                )
        if embeddings.shared_codebook:
            if any(not torch.equal(codebooks[0], codebook) for codebook in codebooks[1:]):
                raise ValueError(
                    "codebooks: expected one shared codebook (config.shared_codebook), got different ones"
                )
            stacked = codebooks[0]
        else:
            stacked = torch.cat([codebook.to(codebooks[0].device) for codebook in codebooks])
        embeddings.codebook.copy_(stacked)

    def load_codebooks_from_rqvae(self, vqvae: nn.Module) -> None:
        """Copy the codebooks of an RQ-VAE (anything with `get_codebook_embeddings() -> list of (K_d, C)`)."""
        if not callable(getattr(vqvae, "get_codebook_embeddings", None)):
            raise TypeError(
                f"vqvae: expected a model with get_codebook_embeddings(), got {type(vqvae).__name__}"
            )
        self.set_codebook_embeddings(vqvae.get_codebook_embeddings())

    def check_codebook(self) -> None:
        """Raise `ValueError` when the model reads a codebook that was never set (still all zeros)."""
        codebook = self.code_embeddings.codebook
        if codebook is not None and not bool(codebook.any()):
            raise ValueError(
                "codebook: expected the RQ-VAE codebooks (set_codebook_embeddings / load_codebooks_from_rqvae), "
                "got all zeros"
            )

    # ---- inference ------------------------------------------------------------------------------------------

    def fuse_qkv_projections(self) -> None:
        """
        Inference speed-up: every attention layer computes query, key and value with one `(3E, E)` matrix product
        instead of three (fewer, larger kernels per decoding step). The fused weights are a snapshot of the
        current ones, are not saved, and are refused in training mode: fuse again after changing the weights,
        [`unfuse_qkv_projections`] before training.
        """
        for layer in (*self.spatial_layers, *self.depth_layers):
            layer.self_attn.fuse_qkv_projections()

    def unfuse_qkv_projections(self) -> None:
        """Undo [`fuse_qkv_projections`]: the attention layers use their separate projections again."""
        for layer in (*self.spatial_layers, *self.depth_layers):
            layer.self_attn.unfuse_qkv_projections()

    # ---- input checks ---------------------------------------------------------------------------------------

    def check_codes(self, codes: object, name: str, length: int | None = None) -> torch.Tensor:
        """
        Validate a code tensor `(B, h, w, D)`; with `length`, `(B, rows, w, D)` or raster `(B, L, D)` of at most
        `length` positions is accepted and returned as `(B, L, D)`. Codes must lie in each depth's vocab.
        """
        height, width, depth = self.config.code_shape
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
            raise TypeError(
                f"{name}: expected an integer torch.Tensor, got {type(codes).__name__} {_dtype(codes)}"
            )
        if length is None:
            if codes.dim() != 4 or tuple(codes.shape[1:]) != (height, width, depth):
                raise ValueError(
                    f"{name}: expected shape (B, {height}, {width}, {depth}), got {tuple(codes.shape)}"
                )
        else:
            if codes.dim() == 4 and codes.shape[2] == width:
                codes = codes.flatten(1, 2)
            if codes.dim() != 3 or codes.shape[2] != depth or codes.shape[1] > length:
                raise ValueError(
                    f"{name}: expected shape (B, rows <= {height}, {width}, {depth}) or (B, L <= {length}, {depth}), "
                    f"got {tuple(codes.shape)}"
                )
        sizes = torch.tensor(self.config.vocab_size, device=codes.device)
        if codes.numel() and bool(((codes < 0) | (codes >= sizes)).any()):
            raise ValueError(
                f"{name}: expected codes in [0, vocab_size[d]) for vocab sizes {self.config.vocab_size}, got values "
                f"in [{int(codes.min())}, {int(codes.max())}]"
            )
        return codes.long()

    def prepare_condition_ids(self, condition_ids: object, batch_size: int | None) -> torch.Tensor:
        """
        Validate condition ids and return them as `(B, Lc)` long. `None` is allowed only for unconditional models
        (then `batch_size` rows of the start id 0); `(B,)` is accepted when `Lc == 1`.
        """
        length = self.config.condition_sequence_length
        vocab = self.config.num_condition_embeddings
        device = self.condition_embeddings.weight.device
        if condition_ids is None:
            if self.config.is_conditional:
                raise ValueError(
                    f"condition_ids: expected (B, {length}) ids for a conditional model, got None"
                )
            return torch.zeros(batch_size, length, dtype=torch.long, device=device)
        if (
            not isinstance(condition_ids, torch.Tensor)
            or condition_ids.is_floating_point()
            or condition_ids.is_complex()
        ):
            raise TypeError(
                f"condition_ids: expected an integer torch.Tensor, got {type(condition_ids).__name__} "
                f"{_dtype(condition_ids)}"
            )
        if condition_ids.dim() == 1 and length == 1:
            condition_ids = condition_ids[:, None]
        if condition_ids.dim() != 2 or condition_ids.shape[1] != length:
            raise ValueError(f"condition_ids: expected shape (B, {length}), got {tuple(condition_ids.shape)}")
        if batch_size is not None and condition_ids.shape[0] != batch_size:
            raise ValueError(f"condition_ids: expected batch size {batch_size}, got {condition_ids.shape[0]}")
        if condition_ids.numel() and bool(((condition_ids < 0) | (condition_ids >= vocab)).any()):
            raise ValueError(
                f"condition_ids: expected ids in [0, {vocab}), got values in "
                f"[{int(condition_ids.min())}, {int(condition_ids.max())}]"
            )
        return condition_ids.to(device=device, dtype=torch.long)

    # ---- forward --------------------------------------------------------------------------------------------

    def condition_inputs(self, condition_ids: torch.Tensor) -> torch.Tensor:
        """`(B, Lc) -> (B, Lc, E)`: condition embeddings plus their position embeddings."""
        return self.condition_embeddings(condition_ids) + self.condition_position_embeddings

    def forward(
        self,
        codes: torch.LongTensor,
        condition_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        soft_labels: torch.FloatTensor | None = None,
        return_dict: bool | None = None,
    ) -> RQTransformerOutput | tuple:
        """
        Teacher-forced logits of every code.

        Args:
            codes: `(B, h, w, D)` long, the code map (also the model's input, shifted internally).
            condition_ids: `(B, Lc)` long (or `(B,)` when Lc = 1); `None` for unconditional models.
            labels: `(B, h, w, D)` long targets (usually `codes`); `-100` entries are ignored.
            soft_labels: `(B, h, w, D, K)` float target distributions (e.g. RQ-VAE soft codes), zero past each
                depth's vocab size. At most one of `labels` / `soft_labels`.
            return_dict: `False` returns a tuple instead of [`RQTransformerOutput`].
        """
        codes = self.check_codes(codes, "codes")
        batch, height, width, depth = codes.shape
        condition_ids = self.prepare_condition_ids(condition_ids, batch)
        self.check_codebook()
        if labels is not None and soft_labels is not None:
            raise ValueError("soft_labels: expected None when labels are given, got a tensor")

        codes = codes.reshape(batch, height * width, depth)
        condition_length = condition_ids.shape[1]
        spatial = self.code_embeddings.spatial_inputs(codes[:, :-1]) + self.spatial_position_embeddings[:-1]
        hidden_states = self.embedding_dropout(
            torch.cat([self.condition_inputs(condition_ids), spatial], dim=1)
        )
        attention_mask = self._training_mask(hidden_states)
        for layer in self.spatial_layers:
            hidden_states = layer(hidden_states, attention_mask)

        depth_states = torch.cat(
            [hidden_states[:, condition_length - 1 :, None], self.code_embeddings.depth_inputs(codes)], dim=2
        )
        depth_states = (depth_states + self.depth_position_embeddings).reshape(
            batch * height * width, depth, -1
        )
        attention_mask = self._training_mask(depth_states)
        for layer in self.depth_layers:
            depth_states = layer(depth_states, attention_mask)
        logits = self.classifier(depth_states.reshape(batch, height, width, depth, -1))

        condition_logits = None
        if self.condition_classifier is not None:
            condition_logits = self.condition_classifier(hidden_states[:, : condition_length - 1])

        loss = code_loss = condition_loss = None
        if labels is not None or soft_labels is not None:
            loss = code_loss = self._code_loss(logits, labels, soft_labels)
            if condition_logits is not None:
                condition_loss = F.cross_entropy(
                    condition_logits.flatten(0, 1).float(), condition_ids[:, 1:].flatten()
                )
                weight = self.config.condition_loss_weight
                loss = (1 - weight) * code_loss + weight * condition_loss
        output = RQTransformerOutput(
            loss=loss,
            logits=logits,
            condition_logits=condition_logits,
            code_loss=code_loss,
            condition_loss=condition_loss,
        )
        return output if return_dict is not False else output.to_tuple()

    def _training_mask(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Causal mask for a full sequence: `None` (SDPA's own causal mode) unless attention is eager."""
        if self.config._attn_implementation == "sdpa":
            return None
        positions = torch.arange(hidden_states.shape[1], device=hidden_states.device)
        return causal_attention_mask(positions, hidden_states.shape[1], hidden_states.dtype)

    def _code_loss(
        self, logits: torch.Tensor, labels: torch.Tensor | None, soft_labels: torch.Tensor | None
    ) -> torch.Tensor:
        """Mean cross-entropy over all code positions, against hard `labels` or `soft_labels`."""
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != tuple(logits.shape[:-1]):
                raise ValueError(f"labels: expected shape {tuple(logits.shape[:-1])}, got {_shape(labels)}")
            return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten().long(), ignore_index=-100)
        if not isinstance(soft_labels, torch.Tensor) or tuple(soft_labels.shape) != tuple(logits.shape):
            raise ValueError(f"soft_labels: expected shape {tuple(logits.shape)}, got {_shape(soft_labels)}")
        log_probs = F.log_softmax(logits.float(), dim=-1)
        invalid = self.classifier.invalid_logits(logits.device)
        if invalid is not None:
            log_probs = log_probs.masked_fill(invalid, 0.0)
        return -(soft_labels.float() * log_probs).sum(-1).mean()

    # ---- generation -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        condition_ids: torch.LongTensor | None = None,
        num_samples: int | None = None,
        temperature: float | None = None,
        top_k: int | Sequence[int] | None = None,
        top_p: float | Sequence[float] | None = None,
        guidance_scale: float | None = None,
        prefix_codes: torch.LongTensor | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        compile: bool | dict = False,
    ) -> torch.LongTensor:
        """
        Sample code maps: raster order over (h, w), depth innermost.

        Args:
            condition_ids: `(B, Lc)` long (class ids may be `(B,)`); `None` for unconditional models.
            num_samples: batch size B; needed when neither `condition_ids` nor `prefix_codes` gives it, and
                must agree with them otherwise.
            temperature: > 0, divides the logits. `None`: `generation_config.temperature`, else 1.
            top_k: keep the k most likely codes (ties at the k-th value kept), one int or one per depth;
                `None`: `generation_config.top_k`, else no top-k. Values above a depth's vocab size mean "all".
            top_p: nucleus sampling in (0, 1], one float or one per depth; `None`: `generation_config.top_p`,
                else none. The most likely code is always kept.
            guidance_scale: classifier-free guidance `uncond + s * (cond - uncond)` on the logits (batch
                doubled with `config.null_condition_id`); 1 disables it. `None`: `generation_config`, else 1.
            prefix_codes: `(B, rows, w, D)` or raster `(B, L, D)` long: the first positions, kept as given.
            generator: `torch.Generator` on the model's device, for reproducible samples.
            use_cache: `False` runs the uncached teacher-forced reference (a full forward per code).
            compile: compile the decoding step with `torch.compile`: `True` for one graph per step with CUDA
                graphs on GPU (`mode="reduce-overhead"`) and, on CPU, inductor's autotuned C++ GEMM templates on
                frozen weights (a slower first call; `default_compile_options` in `generation_rqtransformer`), or a
                dict of `torch.compile` options (e.g. `{"mode": "max-autotune"}`). The compiled decoder is kept for
                later calls with the same batch size. A new batch size compiles again (dynamo's default: from the
                second size on, one graph with a dynamic batch dimension); with frozen weights, so does any change
                of the weights (in place or replaced).

        Returns:
            `(B, h, w, D)` long codes. Sampling uses fp32 logits whatever the model dtype.
        """
        from .generation_rqtransformer import generate_codes

        return generate_codes(
            self,
            condition_ids=condition_ids,
            num_samples=num_samples,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            prefix_codes=prefix_codes,
            generator=generator,
            use_cache=use_cache,
            compile=compile,
        )


def _dtype(value: object) -> str:
    return str(value.dtype) if isinstance(value, torch.Tensor) else ""


def _shape(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


AutoModel.register(RQTransformerConfig, RQTransformerForImageGeneration, exist_ok=True)

__all__ = [
    "RQTransformerForImageGeneration",
    "RQTransformerOutput",
    "RQTransformerPreTrainedModel",
]
