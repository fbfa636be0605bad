"""Conversion of original RQ-Transformer (stage 2) checkpoints: config, generation defaults and weights.

Library functions for `conversion.py`, which reads the release folders (`config.yaml` with PyYAML, `model.pt`
with `torch.load(weights_only=True)`) and writes the converted folders.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
from transformers import GenerationConfig

from .configuration_rqtransformer import RQTransformerConfig
from .modeling_rqtransformer import RQTransformerForImageGeneration, offsets_of

# Every key of the original `RQTransformerConfig` dataclass (rqvae/models/rqtransformer/configs.py).
_ARCH_KEYS = {
    "type", "ema", "ar_hierarchy", "vocab_size", "block_size", "vocab_size_cond", "block_size_cond", "embed_dim",
    "input_embed_dim", "use_padding_emb", "input_emb_vqvae", "head_emb_vqvae", "scaled_head_emb_vqvae",
    "cumsum_depth_ctx", "shared_tok_emb", "embd_pdrop", "body", "head", "shared_cls_emb",
}  # fmt: skip
_STACK_KEYS = {"n_layer", "block"}
_BLOCK_DEFAULTS = {"mlp_bias": True, "attn_bias": True, "attn_pdrop": 0.0, "resid_pdrop": 0.1, "gelu": "v1"}
_GELU = {"v1": "gelu", "v2": "quick_gelu"}
# Options the released model code never reads: a checkpoint that sets them was trained by other code, whose
# meaning of them is unknown, so it is refused rather than converted into a possibly different model.
_IGNORED_BY_ORIGINAL = {"use_padding_emb": False, "scaled_head_emb_vqvae": False, "ar_hierarchy": None}

_KEY_RULES = [
    (r"pos_emb_cond", "condition_position_embeddings"),
    (r"pos_emb_hw", "spatial_position_embeddings"),
    (r"pos_emb_d", "depth_position_embeddings"),
    (r"cond_emb\.(weight)", r"condition_embeddings.\1"),
    (r"input_mlp\.(weight|bias)", r"code_embeddings.input_projection.\1"),
    (r"head_mlp\.(weight|bias)", r"code_embeddings.head_projection.\1"),
    (r"tok_emb\.(weight)", r"code_embeddings.token_embeddings.\1"),
    (r"body_transformer\.blocks\.(\d+)\.(.+)", r"spatial_layers.\1.\2"),
    (r"head_transformer\.blocks\.(\d+)\.(.+)", r"depth_layers.\1.\2"),
    (r"classifier\.layer_norm\.(weight|bias)", r"classifier.norm.\1"),
    (r"classifier\.linear\.(weight|bias)", r"classifier.linear.\1"),
    (r"cond_classifier\.layer_norm\.(weight|bias)", r"condition_classifier.norm.\1"),
    (r"cond_classifier\.linear\.(weight|bias)", r"condition_classifier.linear.\1"),
]
_BLOCK_RULES = {
    "ln1": "input_layernorm",
    "ln2": "post_attention_layernorm",
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.proj": "self_attn.o_proj",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}
_CODEBOOK_KEY = "code_embeddings.codebook"


def _section(mapping: Mapping, key: str, where: str) -> Mapping:
    value = mapping.get(key)
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}.{key}: expected a mapping, got {type(value).__name__}")
    return value


def _stack_options(arch: Mapping, name: str, embed_dim: int) -> tuple[int, int, dict]:
    """`(n_layer, n_head, block options with defaults)` of `arch.body` / `arch.head`."""
    stack = _section(arch, name, "arch")
    if unknown := sorted(set(stack) - _STACK_KEYS):
        raise ValueError(f"arch.{name}: expected keys {sorted(_STACK_KEYS)}, got unsupported {unknown}")
    block = dict(stack.get("block") or {})
    if unknown := sorted(set(block) - set(_BLOCK_DEFAULTS) - {"embed_dim", "n_head"}):
        raise ValueError(f"arch.{name}.block: unsupported option(s) {unknown}")
    if block.get("embed_dim", embed_dim) != embed_dim:
        raise ValueError(
            f"arch.{name}.block.embed_dim: expected arch.embed_dim {embed_dim}, got {block['embed_dim']}"
        )
    if stack.get("n_layer") is None or block.get("n_head") is None:
        raise ValueError(f"arch.{name}: expected n_layer and block.n_head, got {dict(stack)}")
    options = {key: block.get(key, default) for key, default in _BLOCK_DEFAULTS.items()}
    return int(stack["n_layer"]), int(block["n_head"]), options


def rqtransformer_config_from_original(stage2_config: Mapping) -> RQTransformerConfig:
    """
    Build an [`RQTransformerConfig`] from a parsed stage-2 `config.yaml` (`arch`, and `vqvae` for the codebook
    layout). Missing keys take the original defaults. Raises `ValueError` naming any option the port does not
    support or any inconsistency with the `vqvae` section.
    """
    arch = _section(stage2_config, "arch", "config")
    if unknown := sorted(set(arch) - _ARCH_KEYS):
        raise ValueError(f"arch: unsupported option(s) {unknown}")
    if arch.get("type", "rq-transformer") != "rq-transformer":
        raise ValueError(f"arch.type: expected 'rq-transformer', got {arch.get('type')!r}")
    for key, default in _IGNORED_BY_ORIGINAL.items():
        if arch.get(key, default) != default:
            raise ValueError(
                f"arch.{key}: expected {default} (the released code ignores this option, so a checkpoint that "
                f"sets it cannot be converted faithfully), got {arch[key]!r}"
            )
    embed_dim = int(arch["embed_dim"])
    spatial_layers, spatial_heads, spatial_block = _stack_options(arch, "body", embed_dim)
    depth_layers, depth_heads, depth_block = _stack_options(arch, "head", embed_dim)
    if differing := sorted(key for key in _BLOCK_DEFAULTS if spatial_block[key] != depth_block[key]):
        raise ValueError(
            f"arch.head.block: expected the same {differing} as arch.body.block, got "
            f"{ {key: depth_block[key] for key in differing} } vs { {key: spatial_block[key] for key in differing} }"
        )
    if spatial_block["gelu"] not in _GELU:
        raise ValueError(f"arch.body.block.gelu: expected 'v1' or 'v2', got {spatial_block['gelu']!r}")

    hparams = (stage2_config.get("vqvae") or {}).get("hparams") or {}
    code_shape = list(arch.get("block_size") or hparams.get("code_shape") or [])
    if hparams.get("code_shape") is not None and list(hparams["code_shape"]) != code_shape:
        raise ValueError(
            f"arch.block_size: expected vqvae code_shape {list(hparams['code_shape'])}, got {code_shape}"
        )
    vocab_size = arch.get("vocab_size", hparams.get("n_embed"))
    if vocab_size is None:
        raise ValueError("arch.vocab_size: expected an int or a list (or vqvae.hparams.n_embed), got None")
    uses_codebook = bool(arch.get("input_emb_vqvae", False) or arch.get("head_emb_vqvae", False))
    codebook_dim = arch.get("input_embed_dim")
    if hparams.get("latent_shape") is not None and code_shape:
        latent = list(hparams["latent_shape"])
        vqvae_dim = math.prod(latent[:2]) // math.prod(code_shape[:2]) * latent[2]
        if codebook_dim is not None and uses_codebook and codebook_dim != vqvae_dim:
            raise ValueError(
                f"arch.input_embed_dim: expected the vqvae code width {vqvae_dim}, got {codebook_dim}"
            )
        codebook_dim = vqvae_dim if codebook_dim is None else codebook_dim
    if uses_codebook and codebook_dim is None:
        raise ValueError(
            "arch.input_embed_dim: expected the code embedding width with input/head_emb_vqvae, got None"
        )
    if uses_codebook and hparams.get("n_embed") is not None:
        expected = hparams["n_embed"]
        expected = list(expected) if isinstance(expected, Sequence) else [expected] * code_shape[-1]
        given = list(vocab_size) if isinstance(vocab_size, Sequence) else [vocab_size] * code_shape[-1]
        if len(code_shape) == 3 and given != expected:
            raise ValueError(f"arch.vocab_size: expected the vqvae codebook sizes {expected}, got {given}")

    return RQTransformerConfig(
        code_shape=code_shape,
        vocab_size=list(vocab_size) if isinstance(vocab_size, Sequence) else vocab_size,
        condition_vocab_size=int(arch.get("vocab_size_cond", 0)),
        condition_length=int(arch.get("block_size_cond", 0)),
        hidden_size=embed_dim,
        codebook_dim=int(codebook_dim) if codebook_dim is not None else embed_dim,
        num_spatial_layers=spatial_layers,
        num_depth_layers=depth_layers,
        num_spatial_heads=spatial_heads,
        num_depth_heads=depth_heads,
        hidden_act=_GELU[spatial_block["gelu"]],
        mlp_bias=bool(spatial_block["mlp_bias"]),
        attention_bias=bool(spatial_block["attn_bias"]),
        embedding_dropout=float(arch.get("embd_pdrop", 0.0)),
        attention_dropout=float(spatial_block["attn_pdrop"]),
        residual_dropout=float(spatial_block["resid_pdrop"]),
        input_emb_vqvae=bool(arch.get("input_emb_vqvae", False)),
        head_emb_vqvae=bool(arch.get("head_emb_vqvae", False)),
        cumsum_depth_ctx=bool(arch.get("cumsum_depth_ctx", False)),
        shared_tok_emb=bool(arch.get("shared_tok_emb", False)),
        shared_cls_emb=bool(arch.get("shared_cls_emb", False)),
        shared_codebook=bool(hparams.get("shared_codebook", False)),
    )


def generation_config_from_original(stage2_config: Mapping) -> GenerationConfig:
    """
    Sampling defaults of a release: `sampling.{temp, top_k, top_p}` (what the original sampling scripts read),
    else `experiment.sample.{top_k, top_p}`. Unset values stay `None` (no top-k / top-p, temperature 1).
    """
    sampling = stage2_config.get("sampling") or {}
    fallback = (stage2_config.get("experiment") or {}).get("sample") or {}
    values = {key: sampling.get(key, fallback.get(key)) for key in ("top_k", "top_p")}
    temperature = sampling.get("temp")
    return GenerationConfig(
        do_sample=True,
        temperature=1.0 if temperature is None else float(temperature),
        top_k=values["top_k"],
        top_p=values["top_p"],
    )


def _rename(key: str) -> str | None:
    for pattern, replacement in _KEY_RULES:
        if re.fullmatch(pattern, key):
            new_key = re.sub(pattern, replacement, key)
            break
    else:
        return None
    for old, new in _BLOCK_RULES.items():
        new_key = re.sub(rf"(layers\.\d+)\.{re.escape(old)}\.", rf"\1.{new}.", new_key)
    return new_key


def convert_rqtransformer_state_dict(
    original_state_dict: Mapping[str, torch.Tensor], config: RQTransformerConfig
) -> dict[str, torch.Tensor]:
    """
    Map an original stage-2 `state_dict` to [`RQTransformerForImageGeneration`] keys. Every key except the RQ-VAE
    codebook copy (not part of stage 2: set it with `set_codebook_embeddings`) is produced. Raises `ValueError`
    naming missing, unexpected or mis-shaped keys.
    """
    with torch.device("meta"):
        expected = {
            key: tensor.shape for key, tensor in RQTransformerForImageGeneration(config).state_dict().items()
        }
    expected.pop(_CODEBOOK_KEY, None)
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in original_state_dict.items():
        if key == "tok_emb.offsets":  # TupleEmbedding's offsets: fixed by the vocab sizes
            offsets = offsets_of(config.vocab_size, config.shared_tok_emb)
            if tensor.tolist() != offsets:
                raise ValueError(f"tok_emb.offsets: expected {offsets}, got {tensor.tolist()}")
            continue
        new_key = _rename(key)
        if new_key is None or new_key not in expected:
            unexpected.append(key)
            continue
        if key.startswith("pos_emb_"):
            tensor = tensor.reshape(tensor.shape[-2:])
        if tensor.shape != expected[new_key]:
            raise ValueError(f"{key}: expected shape {tuple(expected[new_key])}, got {tuple(tensor.shape)}")
        converted[new_key] = tensor
    missing = sorted(set(expected) - set(converted))
    if missing or unexpected:
        raise ValueError(
            f"original_state_dict: expected the keys of this config, got missing {missing} and unexpected "
            f"{sorted(unexpected)}"
        )
    return converted


def rqtransformer_from_original(
    stage2_config: Mapping,
    original_state_dict: Mapping[str, torch.Tensor],
    codebooks: Sequence[torch.Tensor] | None,
) -> RQTransformerForImageGeneration:
    """
    The converted model (config, weights, generation defaults, codebook copy), ready for `save_pretrained`.

    Args:
        stage2_config: the parsed stage-2 `config.yaml`.
        original_state_dict: its `model.pt` `state_dict` (or `state_dict_ema`).
        codebooks: the RQ-VAE codebooks, one `(K_d, C)` tensor per depth without the padding row; `None` only
            for models that read no codebook (`input_emb_vqvae` and `head_emb_vqvae` false).
    """
    config = rqtransformer_config_from_original(stage2_config)
    model = RQTransformerForImageGeneration(config)
    model.load_state_dict(convert_rqtransformer_state_dict(original_state_dict, config), strict=False)
    if codebooks is not None or model.code_embeddings.codebook is not None:
        model.set_codebook_embeddings(codebooks)
    model.generation_config = generation_config_from_original(stage2_config)
    return model.eval()


__all__ = [
    "convert_rqtransformer_state_dict",
    "generation_config_from_original",
    "rqtransformer_config_from_original",
    "rqtransformer_from_original",
]
