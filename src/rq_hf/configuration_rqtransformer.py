"""Configuration of the RQ-Transformer (Lee et al., CVPR 2022, stage 2)."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import AutoConfig, PretrainedConfig

_ACTIVATIONS = ("gelu", "quick_gelu")


class RQTransformerConfig(PretrainedConfig):
    r"""
    Configuration of [`RQTransformerForImageGeneration`].

    The model predicts a code map of shape `code_shape = (h, w, D)` (h x w positions in raster order, D residual
    codes per position) after a condition sequence of `condition_length` tokens. A spatial transformer reads the
    positions, a depth transformer the D codes of one position. Original names (kakaobrain/rq-vae-transformer
    `arch` section) are given in brackets.

    Args:
        code_shape (`Sequence[int]`, defaults to `(8, 8, 4)`):
            `(h, w, D)` of the code map [`block_size`].
        vocab_size (`int` or `Sequence[int]`, defaults to 16384):
            Codebook size, one for all depths or one per depth [`vocab_size`]. Stored as a list of D ints.
        condition_vocab_size (`int`, defaults to 0):
            Number of condition ids (classes or text tokens) [`vocab_size_cond`]. 0 or 1 means unconditional:
            a single learned start embedding (id 0) is used.
        condition_length (`int`, defaults to 0):
            Length of the condition sequence [`block_size_cond`]; 0 means 1. With more than one token the model
            also has a condition classifier that predicts the condition tokens (text-to-image models).
        hidden_size (`int`, defaults to 1536):
            Width of both transformers [`embed_dim`].
        codebook_dim (`int`, defaults to 256):
            Width of the RQ-VAE code embeddings [`input_embed_dim`].
        num_spatial_layers / num_depth_layers (`int`, defaults to 42 / 6):
            Blocks of the spatial and the depth transformer [`body.n_layer`, `head.n_layer`].
        num_spatial_heads / num_depth_heads (`int`, defaults to 24):
            Attention heads of each transformer [`body.block.n_head`, `head.block.n_head`].
        intermediate_size (`int`, *optional*):
            MLP width; defaults to `4 * hidden_size` as in the original.
        hidden_act (`str`, defaults to `"gelu"`):
            `"gelu"` (exact erf GELU, original `gelu: v1`) or `"quick_gelu"` (`x * sigmoid(1.702 x)`, `gelu: v2`).
        mlp_bias / attention_bias (`bool`, defaults to `True`):
            Biases of the MLP and attention linears [`mlp_bias`, `attn_bias`].
        embedding_dropout / attention_dropout / residual_dropout (`float`, defaults to 0.0 / 0.0 / 0.1):
            [`embd_pdrop`, `attn_pdrop`, `resid_pdrop`].
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of every LayerNorm.
        input_emb_vqvae (`bool`, defaults to `True`):
            Spatial inputs are `input_projection` of the RQ-VAE code embeddings (else learned token embeddings).
        head_emb_vqvae (`bool`, defaults to `True`):
            Depth inputs are `head_projection` of the RQ-VAE code embeddings (else learned token embeddings).
        cumsum_depth_ctx (`bool`, defaults to `True`):
            With `head_emb_vqvae`: the depth input at depth d projects the sum of the code embeddings of depths
            < d (else the embedding of depth d - 1 alone).
        shared_tok_emb (`bool`, defaults to `True`):
            Learned token embeddings shared by all depths (else one table per depth). Needs equal vocab sizes.
        shared_cls_emb (`bool`, defaults to `True`):
            One classifier for all depths (else one per depth). Needs equal vocab sizes.
        shared_codebook (`bool`, defaults to `True`):
            The RQ-VAE uses one codebook for all depths (stage-1 `shared_codebook`); it sets the layout of the
            model's frozen codebook copy. Needs equal vocab sizes.
        null_condition_id (`int`, *optional*):
            Condition id of the "no condition" input used for classifier-free guidance (repeated over the
            condition length). Only models trained with condition dropout have one; the released ones do not.
        condition_loss_weight (`float`, defaults to 0.1):
            For models with a condition classifier (`condition_length > 1`): the training loss is
            `(1 - w) * code loss + w * condition-token loss`, the original text-to-image recipe's 0.9 / 0.1 split.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of linear, embedding and position weights.
    """

    model_type = "rq_transformer"

    def __init__(
        self,
        code_shape: Sequence[int] = (8, 8, 4),
        vocab_size: int | Sequence[int] = 16384,
        condition_vocab_size: int = 0,
        condition_length: int = 0,
        hidden_size: int = 1536,
        codebook_dim: int = 256,
        num_spatial_layers: int = 42,
        num_depth_layers: int = 6,
        num_spatial_heads: int = 24,
        num_depth_heads: int = 24,
        intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        mlp_bias: bool = True,
        attention_bias: bool = True,
        embedding_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        residual_dropout: float = 0.1,
        layer_norm_eps: float = 1e-5,
        input_emb_vqvae: bool = True,
        head_emb_vqvae: bool = True,
        cumsum_depth_ctx: bool = True,
        shared_tok_emb: bool = True,
        shared_cls_emb: bool = True,
        shared_codebook: bool = True,
        null_condition_id: int | None = None,
        condition_loss_weight: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs,
    ) -> None:
        code_shape = [int(size) for size in code_shape]
        if len(code_shape) != 3 or min(code_shape) < 1:
            raise ValueError(f"code_shape: expected 3 positive ints (h, w, D), got {code_shape}")
        depth = code_shape[2]
        vocab_size = (
            [int(vocab_size)] * depth if isinstance(vocab_size, int) else [int(v) for v in vocab_size]
        )
        if len(vocab_size) != depth or min(vocab_size) < 1:
            raise ValueError(
                f"vocab_size: expected a positive int or {depth} positive ints, got {vocab_size}"
            )
        equal_sizes = len(set(vocab_size)) == 1
        for flag, value in (("shared_tok_emb", shared_tok_emb), ("shared_cls_emb", shared_cls_emb)):
            if value and not equal_sizes:
                raise ValueError(
                    f"{flag}: expected False when the vocab sizes differ ({vocab_size}), got True"
                )
        if shared_codebook and not equal_sizes:
            raise ValueError(
                f"shared_codebook: expected False when the vocab sizes differ ({vocab_size}), got True"
            )
        if condition_length > 1 and condition_vocab_size < 2:
            raise ValueError(
                f"condition_vocab_size: expected >= 2 with condition_length {condition_length}, "
                f"got {condition_vocab_size}"
            )
        for name, heads in (("num_spatial_heads", num_spatial_heads), ("num_depth_heads", num_depth_heads)):
            if heads < 1 or hidden_size % heads != 0:
                raise ValueError(f"{name}: expected a divisor of hidden_size {hidden_size}, got {heads}")
        if hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act: expected one of {_ACTIVATIONS}, got {hidden_act!r}")
        num_conditions = max(condition_vocab_size, 1)
        if null_condition_id is not None and not 0 <= null_condition_id < num_conditions:
            raise ValueError(
                f"null_condition_id: expected an id in [0, {num_conditions}) or None, got {null_condition_id}"
            )

        if not 0 <= condition_loss_weight <= 1:
            raise ValueError(
                f"condition_loss_weight: expected a float in [0, 1], got {condition_loss_weight}"
            )

        self.code_shape = code_shape
        self.vocab_size = vocab_size
        self.condition_vocab_size = condition_vocab_size
        self.condition_length = condition_length
        self.hidden_size = hidden_size
        self.codebook_dim = codebook_dim
        self.num_spatial_layers = num_spatial_layers
        self.num_depth_layers = num_depth_layers
        self.num_spatial_heads = num_spatial_heads
        self.num_depth_heads = num_depth_heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.hidden_act = hidden_act
        self.mlp_bias = mlp_bias
        self.attention_bias = attention_bias
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.residual_dropout = residual_dropout
        self.layer_norm_eps = layer_norm_eps
        self.input_emb_vqvae = input_emb_vqvae
        self.head_emb_vqvae = head_emb_vqvae
        self.cumsum_depth_ctx = cumsum_depth_ctx
        self.shared_tok_emb = shared_tok_emb
        self.shared_cls_emb = shared_cls_emb
        self.shared_codebook = shared_codebook
        self.null_condition_id = null_condition_id
        self.condition_loss_weight = condition_loss_weight
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def num_condition_embeddings(self) -> int:
        """Rows of the condition embedding table (1 for unconditional models: the start embedding)."""
        return max(self.condition_vocab_size, 1)

    @property
    def condition_sequence_length(self) -> int:
        """Number of condition tokens in front of the code sequence (at least 1)."""
        return max(self.condition_length, 1)

    @property
    def is_conditional(self) -> bool:
        """Whether `generate` / `forward` need condition ids (more than one condition embedding)."""
        return self.num_condition_embeddings > 1


AutoConfig.register(RQTransformerConfig.model_type, RQTransformerConfig, exist_ok=True)

__all__ = ["RQTransformerConfig"]
