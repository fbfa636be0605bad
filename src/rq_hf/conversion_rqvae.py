"""Stage 1 of an original release (RQ-VAE) -> [`RQVAEModel`] config and state dict.

The original is the VQGAN (taming-transformers) layout; diffusers' `Encoder`/`Decoder` hold the same
weights under other names (official-format.md, "Key map").
"""

from __future__ import annotations

import re
from typing import Any

import torch

_SUPPORTED_BOTTLENECK = "rq"


def _require(config: dict, path: str) -> Any:
    """``config["a"]["b"]`` for ``path="a.b"``, or a ValueError naming the missing key."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"config.yaml: expected key '{path}', got a config without it")
        node = node[part]
    return node


def rqvae_config_from_original(stage1_config: dict) -> dict:
    """Keyword arguments of [`RQVAEModel`] from an original stage-1 ``config.yaml`` (parsed), or from the
    ``vqvae`` section of a stage-2 config (pass ``{"arch": config["vqvae"]}``).

    Raises:
        ValueError: a required key is missing or an option has no faithful equivalent.
    """
    hparams = _require(stage1_config, "arch.hparams")
    ddconfig = _require(stage1_config, "arch.ddconfig")
    required = {
        "arch.hparams": ["embed_dim", "n_embed", "latent_shape", "code_shape", "shared_codebook"],
        "arch.ddconfig": [
            "z_channels",
            "resolution",
            "in_channels",
            "out_ch",
            "ch",
            "ch_mult",
            "num_res_blocks",
            "attn_resolutions",
        ],
    }
    for section, keys in required.items():
        for key in keys:
            _require(stage1_config, f"{section}.{key}")

    bottleneck = hparams.get("bottleneck_type", _SUPPORTED_BOTTLENECK)
    if bottleneck != _SUPPORTED_BOTTLENECK:
        raise ValueError(f"arch.hparams.bottleneck_type: expected 'rq', got {bottleneck!r}")
    if ddconfig.get("double_z", False):
        raise ValueError(
            "arch.ddconfig.double_z: expected false (the RQ-VAE encoder is deterministic), got true"
        )
    if float(ddconfig.get("dropout", 0.0)) != 0.0:
        raise ValueError(
            f"arch.ddconfig.dropout: expected 0.0 (diffusers' blocks have none), got {ddconfig['dropout']}"
        )

    levels = len(ddconfig["ch_mult"])
    resolution = int(ddconfig["resolution"])
    latent_h, latent_w, latent_c = (int(v) for v in hparams["latent_shape"])
    code_h, code_w, depth = (int(v) for v in hparams["code_shape"])
    if resolution // 2 ** (levels - 1) != latent_h or latent_h != latent_w:
        raise ValueError(
            f"arch.hparams.latent_shape: expected [{resolution // 2 ** (levels - 1)}] * 2 + [C] for resolution "
            f"{resolution} and {levels} levels, got {hparams['latent_shape']}"
        )
    if latent_c != int(hparams["embed_dim"]):
        raise ValueError(
            f"arch.hparams.latent_shape: expected {hparams['embed_dim']} channels (embed_dim), got {latent_c}"
        )
    if latent_h % code_h or latent_w % code_w:
        raise ValueError(
            f"arch.hparams.code_shape: expected a code map dividing the latent map {latent_h}x{latent_w}, "
            f"got {hparams['code_shape']}"
        )

    attention = {int(r) for r in ddconfig["attn_resolutions"]}
    has_attention = [resolution // 2**level in attention for level in range(levels)]
    n_embed = hparams["n_embed"]
    return {
        "in_channels": int(ddconfig["in_channels"]),
        "out_channels": int(ddconfig["out_ch"]),
        "down_block_types": [
            "AttnDownEncoderBlock2D" if attn else "DownEncoderBlock2D" for attn in has_attention
        ],
        "up_block_types": [
            "AttnUpDecoderBlock2D" if attn else "UpDecoderBlock2D" for attn in reversed(has_attention)
        ],
        "block_out_channels": [int(ddconfig["ch"]) * int(m) for m in ddconfig["ch_mult"]],
        "layers_per_block": int(ddconfig["num_res_blocks"]),
        "latent_channels": int(ddconfig["z_channels"]),
        "embed_dim": int(hparams["embed_dim"]),
        "sample_size": resolution,
        "num_quantizers": depth,
        "codebook_size": int(n_embed) if isinstance(n_embed, int) else [int(k) for k in n_embed],
        "shared_codebook": bool(hparams["shared_codebook"]),
        "code_patch_size": [latent_h // code_h, latent_w // code_w],
        "ema_decay": float(hparams.get("decay", 0.99)),
        "restart_unused_codes": bool(hparams.get("restart_unused_codes", True)),
        "commitment_weight": float(hparams.get("latent_loss_weight", 0.25)),
    }


def _key_rules(num_levels: int) -> list[tuple[re.Pattern, Any]]:
    """Ordered (pattern, replacement) rules original key -> diffusers key; first match wins."""
    last = num_levels - 1
    resnet = r"(norm1|conv1|norm2|conv2)"
    attn_names = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    rules: list[tuple[str, Any]] = [
        (r"^(encoder|decoder)\.conv_(in|out)\.(weight|bias)$", r"\1.conv_\2.\3"),
        (r"^(encoder|decoder)\.norm_out\.(weight|bias)$", r"\1.conv_norm_out.\2"),
        (r"^(quant_conv|post_quant_conv)\.(weight|bias)$", r"\1.\2"),
        (
            rf"^(encoder|decoder)\.mid\.block_(1|2)\.{resnet}\.(weight|bias)$",
            lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3]}.{m[4]}",
        ),
        (
            r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$",
            lambda m: f"{m[1]}.mid_block.attentions.0.{attn_names[m[2]]}.{m[3]}",
        ),
        (
            rf"^encoder\.down\.(\d+)\.block\.(\d+)\.{resnet}\.(weight|bias)$",
            r"encoder.down_blocks.\1.resnets.\2.\3.\4",
        ),
        (
            r"^encoder\.down\.(\d+)\.block\.(\d+)\.nin_shortcut\.(weight|bias)$",
            r"encoder.down_blocks.\1.resnets.\2.conv_shortcut.\3",
        ),
        (
            r"^encoder\.down\.(\d+)\.attn\.(\d+)\.(norm|q|k|v|proj_out)\.(weight|bias)$",
            lambda m: f"encoder.down_blocks.{m[1]}.attentions.{m[2]}.{attn_names[m[3]]}.{m[4]}",
        ),
        (
            r"^encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)$",
            r"encoder.down_blocks.\1.downsamplers.0.conv.\2",
        ),
        (
            rf"^decoder\.up\.(\d+)\.block\.(\d+)\.{resnet}\.(weight|bias)$",
            lambda m: f"decoder.up_blocks.{last - int(m[1])}.resnets.{m[2]}.{m[3]}.{m[4]}",
        ),
        (
            r"^decoder\.up\.(\d+)\.block\.(\d+)\.nin_shortcut\.(weight|bias)$",
            lambda m: f"decoder.up_blocks.{last - int(m[1])}.resnets.{m[2]}.conv_shortcut.{m[3]}",
        ),
        (
            r"^decoder\.up\.(\d+)\.attn\.(\d+)\.(norm|q|k|v|proj_out)\.(weight|bias)$",
            lambda m: f"decoder.up_blocks.{last - int(m[1])}.attentions.{m[2]}.{attn_names[m[3]]}.{m[4]}",
        ),
        (
            r"^decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)$",
            lambda m: f"decoder.up_blocks.{last - int(m[1])}.upsamplers.0.conv.{m[2]}",
        ),
    ]
    return [(re.compile(pattern), replacement) for pattern, replacement in rules]


def _convert_codebooks(original: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """``quantizer.codebooks.{d}.{weight,cluster_size_ema,embed_ema}`` -> our codebook buffers.

    The original embedding has one extra padding row (never used): it is dropped. A shared codebook is
    stored once; the original repeats it per depth, and the copies must agree.
    """
    depth = config["num_quantizers"]
    num_codebooks = 1 if config["shared_codebook"] else depth
    converted = {}
    for index in range(num_codebooks):
        prefix = f"quantizer.codebooks.{index}"
        converted[f"{prefix}.embeddings"] = original[f"{prefix}.weight"][:-1]
        for buffer in ("cluster_size_ema", "embed_ema"):
            converted[f"{prefix}.{buffer}"] = original[f"{prefix}.{buffer}"]
    if config["shared_codebook"]:
        reference = original["quantizer.codebooks.0.weight"]
        for index in range(1, depth):
            copy = original.get(f"quantizer.codebooks.{index}.weight")
            if copy is not None and not torch.equal(copy, reference):
                raise ValueError(
                    f"state_dict: expected quantizer.codebooks.{index}.weight to repeat the shared codebook 0, "
                    "got a different tensor"
                )
    return converted


def convert_rqvae_state_dict(original: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Map every key of an original stage-1 ``state_dict`` to [`RQVAEModel`] (config: the kwargs from
    [`rqvae_config_from_original`]). Attention 1x1 conv weights ``(C, C, 1, 1)`` become linear ``(C, C)``.

    Raises:
        ValueError: keys the map does not know (the message lists them).
    """
    rules = _key_rules(len(config["block_out_channels"]))
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    codebook_key = re.compile(r"^quantizer\.codebooks\.\d+\.(weight|cluster_size_ema|embed_ema)$")
    for key, tensor in original.items():
        if codebook_key.match(key):
            continue
        for pattern, replacement in rules:
            match = pattern.match(key)
            if match:
                new_key = (
                    pattern.sub(replacement, key) if isinstance(replacement, str) else replacement(match)
                )
                if ".attentions." in new_key and new_key.endswith(".weight") and tensor.ndim == 4:
                    tensor = tensor[:, :, 0, 0]
                converted[new_key] = tensor
                break
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"state_dict: expected only RQ-VAE keys, got unexpected keys {sorted(unexpected)}")
    try:
        converted.update(_convert_codebooks(original, config))
    except KeyError as error:
        raise ValueError(f"state_dict: expected key {error.args[0]!r}, got a state_dict without it") from None
    return converted
