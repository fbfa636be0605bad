"""RQ-VAE (Lee et al., CVPR 2022) as a diffusers model: the VQGAN encoder/decoder of diffusers around a
residual quantizer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput, Encoder
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from .quantizer import ResidualQuantizer


@dataclass
class RQVAEEncoderOutput(BaseOutput):
    """Output of [`RQVAEModel.encode`].

    Args:
        latents (`torch.Tensor` of shape `(batch_size, embed_dim, H', W')`): encoder + `quant_conv` output.
        quantized (`torch.Tensor` of shape `(batch_size, embed_dim, H', W')`): sum of the residual code
            embeddings (straight-through to `latents`).
        codes (`torch.LongTensor` of shape `(batch_size, h, w, num_quantizers)`): residual codes.
    """

    latents: torch.Tensor
    quantized: torch.Tensor
    codes: torch.LongTensor


@dataclass
class RQVAEOutput(BaseOutput):
    """Output of [`RQVAEModel.forward`].

    Args:
        sample (`torch.Tensor` of shape `(batch_size, out_channels, H, W)`): reconstruction in [-1, 1]
            (not clamped).
        codes (`torch.LongTensor` of shape `(batch_size, h, w, num_quantizers)`): residual codes.
        commitment_loss (`torch.Tensor`, scalar): unweighted commitment loss (weight in the config).
    """

    sample: torch.Tensor
    codes: torch.LongTensor
    commitment_loss: torch.Tensor


def checked_pixels(images: torch.Tensor) -> torch.Tensor:
    """Decoded images `(B, C, H, W)` clamped to [-1, 1], after checking that they are finite (clamping would hide
    NaN and infinities).

    Raises:
        FloatingPointError: the decoder produced NaN or infinite values.
    """
    if not bool(torch.isfinite(images).all()):
        raise FloatingPointError(
            "vqvae: the decoder produced NaN or infinite pixels (check weights and dtype)"
        )
    return images.clamp(-1, 1)


class RQVAEModel(ModelMixin, ConfigMixin):
    r"""Residual-quantized VAE: images `(B, 3, H, W)` in [-1, 1] <-> code stacks `(B, h, w, D)`.

    The encoder and decoder are diffusers' `Encoder`/`Decoder` (the VQGAN layout of the original), the
    bottleneck is a [`~rq_hf.quantizer.ResidualQuantizer`] with EMA codebooks.

    Parameters:
        in_channels / out_channels: image channels.
        down_block_types / up_block_types: diffusers block names, `AttnDownEncoderBlock2D` /
            `AttnUpDecoderBlock2D` at the resolutions with attention.
        block_out_channels: channels per resolution level (`ch * ch_mult` of the original).
        layers_per_block: resnets per encoder level (`num_res_blocks`; the decoder has one more).
        act_fn: activation of the conv stacks.
        latent_channels: encoder output channels (`z_channels`).
        embed_dim: channels of the quantized latents (output of `quant_conv`).
        sample_size: training image size (informational: any size divisible by the downsampling works).
        norm_num_groups: GroupNorm groups.
        num_quantizers: code depth `D`.
        codebook_size: codes per codebook; an int, or one per depth with `shared_codebook=False`.
        shared_codebook: one codebook for every depth.
        code_patch_size: latent positions `(rH, rW)` per code position.
        ema_decay: EMA decay of the codebooks.
        restart_unused_codes: restart codes whose EMA count falls below 1.
        commitment_weight: weight of the commitment loss in the training objective (the original's
            `latent_loss_weight`).
        mid_block_add_attention: attention in the middle blocks (always on in the original).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ResnetBlock2D"]
    _keep_in_fp32_modules = ["quantizer"]
    _skip_layerwise_casting_patterns = ["quantizer"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",) * 5 + ("AttnDownEncoderBlock2D",),
        up_block_types: Sequence[str] = ("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 5,
        block_out_channels: Sequence[int] = (128, 128, 256, 256, 512, 512),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        latent_channels: int = 256,
        embed_dim: int = 256,
        sample_size: int = 256,
        norm_num_groups: int = 32,
        num_quantizers: int = 4,
        codebook_size: int | Sequence[int] = 16384,
        shared_codebook: bool = True,
        code_patch_size: Sequence[int] = (1, 1),
        ema_decay: float = 0.99,
        restart_unused_codes: bool = True,
        commitment_weight: float = 0.25,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        if not len(down_block_types) == len(up_block_types) == len(block_out_channels):
            raise ValueError(
                "down_block_types, up_block_types, block_out_channels: expected one entry per level each, got "
                f"{len(down_block_types)}, {len(up_block_types)}, {len(block_out_channels)}"
            )
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=tuple(down_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            double_z=False,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.quant_conv = nn.Conv2d(latent_channels, embed_dim, 1)
        self.quantizer = ResidualQuantizer(
            dim=embed_dim,
            num_quantizers=num_quantizers,
            codebook_size=codebook_size,
            shared_codebook=shared_codebook,
            patch_size=code_patch_size,
            decay=ema_decay,
            restart_unused_codes=restart_unused_codes,
        )
        self.post_quant_conv = nn.Conv2d(embed_dim, latent_channels, 1)
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
        )

    # -- shapes -------------------------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> tuple[int, int]:
        """Image pixels per code position along (H, W)."""
        factor = 2 ** (len(self.config.block_out_channels) - 1)
        rh, rw = self.config.code_patch_size
        return factor * rh, factor * rw

    @property
    def code_shape(self) -> tuple[int, int, int]:
        """Code map `(h, w, D)` of a `sample_size` x `sample_size` image."""
        fh, fw = self.downsample_factor
        size = self.config.sample_size
        return size // fh, size // fw, self.config.num_quantizers

    @property
    def codebook_sizes(self) -> list[int]:
        """Codes per depth `[K_1, ..., K_D]`."""
        return list(self.quantizer.codebook_sizes)

    def get_codebook_embeddings(self) -> list[torch.Tensor]:
        """The codebook of each depth, `D` tensors `(K_d, rH*rW*embed_dim)` (detached, float32); with a
        shared codebook the same tensor `D` times. The RQ-Transformer keeps a copy of these."""
        return [
            self.quantizer.codebook(d).embeddings.detach().float() for d in range(self.config.num_quantizers)
        ]

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(
                f"images: expected a float tensor (B, {self.config.in_channels}, H, W), got {got}"
            )
        fh, fw = self.downsample_factor
        _, channels, height, width = images.shape
        if channels != self.config.in_channels or height % fh or width % fw:
            raise ValueError(
                f"images: expected (B, {self.config.in_channels}, H, W) with H divisible by {fh} and W by {fw}, "
                f"got {tuple(images.shape)}"
            )

    # -- encoding -----------------------------------------------------------------------------------------
    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        return self.quant_conv(self.encoder(images))

    @apply_forward_hook
    def encode(self, images: torch.Tensor, return_dict: bool = True) -> RQVAEEncoderOutput | tuple:
        """Images `(B, C, H, W)` in [-1, 1] -> latents, quantized latents `(B, embed_dim, H/f, W/f)` and codes
        `(B, H/f/rH, W/f/rW, D)`."""
        latents = self._latents(images)
        quantized, codes, _ = self.quantizer(latents)
        if not return_dict:
            return latents, quantized, codes
        return RQVAEEncoderOutput(latents=latents, quantized=quantized, codes=codes)

    def quantize(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor]:
        """Latents `(B, embed_dim, H', W')` -> (quantized latents, codes `(B, h, w, D)`, commitment loss)."""
        return self.quantizer(latents)

    @torch.no_grad()
    def soft_codes(
        self,
        images: torch.Tensor,
        temperature: float = 1.0,
        stochastic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """Soft codes of images for the RQ-Transformer's soft labels: `(B, h, w, D, K)` probabilities and the
        codes `(B, h, w, D)` used for the residuals (argmin, or drawn when `stochastic`)."""
        return self.quantizer.soft_codes(self._latents(images), temperature, stochastic, generator)

    def codes_to_embeddings(self, codes: torch.LongTensor, cumulative: bool = False) -> torch.Tensor:
        """Codes `(B, h, w, D)` -> per-depth code embeddings `(B, h, w, D, rH*rW*embed_dim)` (partial sums
        over depth when `cumulative`)."""
        return self.quantizer.codes_to_embeddings(codes, cumulative)

    # -- decoding -----------------------------------------------------------------------------------------
    @apply_forward_hook
    def decode(self, quantized_latents: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Quantized latents `(B, embed_dim, H', W')` -> images `(B, out_channels, H'*f, W'*f)` in [-1, 1]."""
        if (
            not isinstance(quantized_latents, torch.Tensor)
            or quantized_latents.ndim != 4
            or quantized_latents.shape[1] != self.config.embed_dim
        ):
            got = (
                tuple(quantized_latents.shape)
                if isinstance(quantized_latents, torch.Tensor)
                else quantized_latents
            )
            raise ValueError(
                f"quantized_latents: expected a tensor (B, {self.config.embed_dim}, H', W'), got {got}"
            )
        sample = self.decoder(self.post_quant_conv(quantized_latents.to(self.post_quant_conv.weight.dtype)))
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def decode_codes(
        self, codes: torch.LongTensor, depth: int | None = None, return_dict: bool = True
    ) -> DecoderOutput | tuple:
        """Codes `(B, h, w, D)` -> images `(B, out_channels, H, W)` in [-1, 1]; with `depth=d` only the sum of
        the first `d` code levels is decoded (the coarse-to-fine reconstructions of the paper)."""
        return self.decode(self.quantizer.decode_codes(codes, depth), return_dict=return_dict)

    def forward(self, images: torch.Tensor, return_dict: bool = True) -> RQVAEOutput | tuple:
        """Reconstruct images `(B, C, H, W)` in [-1, 1]; in training mode the codebooks take an EMA step."""
        latents = self._latents(images)
        quantized, codes, commitment_loss = self.quantizer(latents)
        sample = self.decode(quantized).sample
        if not return_dict:
            return sample, codes, commitment_loss
        return RQVAEOutput(sample=sample, codes=codes, commitment_loss=commitment_loss)
