"""Residual quantization (Lee et al., CVPR 2022) as a stand-alone module.

A latent vector ``z`` is approximated by a stack of ``D`` codes: at depth ``d`` the nearest code of the
depth's codebook to the residual ``r_{d-1}`` is chosen (``r_0 = z``) and its embedding subtracted. The
quantized vector is the sum of the ``D`` embeddings. Codebooks are learned by exponential moving averages
with dead-code restarts, exactly as the original implementation does, synchronised over
``torch.distributed`` when a process group is initialised (Accelerate's DDP, gloo or NCCL).

The quantizer works on channels-first latent maps ``(B, C, H, W)``. A code map may be coarser than the
latent map: with ``patch_size = (rH, rW)`` each code quantizes the ``rH x rW x C`` vector of one patch,
laid out as ``(rH, rW, C)`` like the original ``to_code_shape``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _fp32_region(device: torch.device):
    """Disable autocast: nearest-code search and EMA statistics must run in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


class EMACodebook(nn.Module):
    """One codebook of ``num_codes`` vectors of ``dim`` channels, learned by EMA with dead-code restart.

    Buffers (saved with the model, float32): ``embeddings`` (K, C), ``cluster_size_ema`` (K,),
    ``embed_ema`` (K, C).
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_unused_codes: bool = True,
    ):
        super().__init__()
        self.num_codes = num_codes
        self.dim = dim
        self.decay = decay
        self.eps = eps
        self.restart_unused_codes = restart_unused_codes
        embeddings = torch.randn(num_codes, dim)
        self.register_buffer("embeddings", embeddings)
        self.register_buffer("cluster_size_ema", torch.zeros(num_codes))
        self.register_buffer("embed_ema", embeddings.clone())

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, dim={self.dim}, decay={self.decay}"

    def distances(self, vectors: torch.Tensor) -> torch.Tensor:
        """Squared euclidean distances ``(..., C) -> (..., K)``, computed as the original does (``addmm``),
        so that argmin ties resolve identically."""
        codebook_t = self.embeddings.float().t()
        flat = vectors.reshape(-1, self.dim)
        distances = torch.addmm(
            flat.pow(2.0).sum(dim=1, keepdim=True) + codebook_t.pow(2.0).sum(dim=0, keepdim=True),
            flat,
            codebook_t,
            alpha=-2.0,
        )
        return distances.reshape(*vectors.shape[:-1], self.num_codes)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids ``(...)`` -> embeddings ``(..., C)``."""
        return F.embedding(codes, self.embeddings.float())

    @torch.no_grad()
    def ema_update(self, vectors: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step on the vectors ``(N, C)`` assigned to ``codes`` ``(N,)``, then refresh ``embeddings``.

        Counts and sums are all-reduced over the process group; the restart candidates are rank 0's,
        broadcast to every rank, so all ranks keep identical codebooks.
        """
        vectors = vectors.reshape(-1, self.dim)
        codes = codes.reshape(-1)
        cluster_size = torch.bincount(codes, minlength=self.num_codes).to(vectors.dtype)
        cluster_sum = vectors.new_zeros(self.num_codes, self.dim).index_add_(0, codes, vectors)
        if _distributed():
            dist.all_reduce(cluster_sum, op=dist.ReduceOp.SUM)
            dist.all_reduce(cluster_size, op=dist.ReduceOp.SUM)

        self.cluster_size_ema.mul_(self.decay).add_(cluster_size, alpha=1 - self.decay)
        self.embed_ema.mul_(self.decay).add_(cluster_sum, alpha=1 - self.decay)

        if self.restart_unused_codes:
            candidates = self._restart_candidates(vectors)
            if _distributed():
                dist.broadcast(candidates, 0)
            used = (self.cluster_size_ema >= 1).to(vectors.dtype)
            self.embed_ema.mul_(used[:, None]).add_(candidates * (1 - used[:, None]))
            self.cluster_size_ema.mul_(used).add_(1 - used)

        total = self.cluster_size_ema.sum()
        normalized_size = total * (self.cluster_size_ema + self.eps) / (total + self.num_codes * self.eps)
        self.embeddings.copy_(self.embed_ema / normalized_size[:, None])

    def _restart_candidates(self, vectors: torch.Tensor) -> torch.Tensor:
        """``num_codes`` random vectors of the batch ``(N, C)``; a batch smaller than the codebook is tiled
        with uniform noise of scale ``0.01 / sqrt(C)``."""
        num_vectors = vectors.shape[0]
        if num_vectors < self.num_codes:
            repeats = math.ceil(self.num_codes / num_vectors)
            noise_scale = vectors.new_ones(self.dim) * 0.01 / math.sqrt(self.dim)
            vectors = vectors.repeat(repeats, 1)
            vectors = vectors + torch.rand_like(vectors) * noise_scale
        permutation = torch.randperm(vectors.shape[0], device=vectors.device)
        return vectors[permutation][: self.num_codes]


class ResidualQuantizer(nn.Module):
    """Residual quantizer with ``num_quantizers`` depths.

    Args:
        dim: channels ``C`` of the latent map.
        num_quantizers: depth ``D`` of each code stack.
        codebook_size: codes per codebook; one int, or one per depth (only with ``shared_codebook=False``).
        shared_codebook: one codebook for every depth (every released model) or one per depth.
        patch_size: ``(rH, rW)`` latent positions per code position (``(1, 1)``: one code stack per latent).
        decay: EMA decay of the codebook statistics.
        eps: Laplace smoothing of the EMA cluster sizes.
        restart_unused_codes: replace codes whose EMA count drops below 1 with vectors of the batch.
    """

    def __init__(
        self,
        dim: int,
        num_quantizers: int,
        codebook_size: int | Sequence[int],
        shared_codebook: bool = True,
        patch_size: Sequence[int] = (1, 1),
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_unused_codes: bool = True,
    ):
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers: expected a positive int, got {num_quantizers}")
        sizes = [codebook_size] * num_quantizers if isinstance(codebook_size, int) else list(codebook_size)
        if len(sizes) != num_quantizers or any(size < 1 for size in sizes):
            raise ValueError(
                f"codebook_size: expected a positive int or {num_quantizers} positive ints, got {codebook_size}"
            )
        if shared_codebook and len(set(sizes)) != 1:
            raise ValueError(f"codebook_size: a shared codebook needs one size, got {codebook_size}")
        self.num_quantizers = num_quantizers
        self.codebook_sizes = sizes
        self.shared_codebook = shared_codebook
        self.patch_size = tuple(patch_size)
        self.latent_dim = dim
        self.code_dim = dim * self.patch_size[0] * self.patch_size[1]
        num_codebooks = 1 if shared_codebook else num_quantizers
        self.codebooks = nn.ModuleList(
            EMACodebook(sizes[i], self.code_dim, decay, eps, restart_unused_codes)
            for i in range(num_codebooks)
        )

    def codebook(self, depth: int) -> EMACodebook:
        """The codebook of depth ``depth`` (0-based)."""
        return self.codebooks[0 if self.shared_codebook else depth]

    # -- layout -------------------------------------------------------------------------------------------
    def to_code_vectors(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, C, H, W)`` -> code vectors ``(B, H/rH, W/rW, rH*rW*C)``."""
        batch, channels, height, width = latents.shape
        rh, rw = self.patch_size
        vectors = latents.permute(0, 2, 3, 1).reshape(batch, height // rh, rh, width // rw, rw, channels)
        return vectors.permute(0, 1, 3, 2, 4, 5).reshape(batch, height // rh, width // rw, -1)

    def to_latents(self, vectors: torch.Tensor) -> torch.Tensor:
        """Code vectors ``(B, h, w, rH*rW*C)`` -> latents ``(B, C, h*rH, w*rW)``."""
        batch, height, width, _ = vectors.shape
        rh, rw = self.patch_size
        latents = vectors.reshape(batch, height, width, rh, rw, self.latent_dim).permute(0, 1, 3, 2, 4, 5)
        return latents.reshape(batch, height * rh, width * rw, self.latent_dim).permute(0, 3, 1, 2)

    # -- quantization -------------------------------------------------------------------------------------
    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor]:
        """Quantize latents ``(B, C, H, W)``.

        Returns:
            quantized ``(B, C, H, W)`` (straight-through: gradients flow to ``latents``), codes
            ``(B, H/rH, W/rW, D)`` int64, and the commitment loss (scalar): the mean over depths ``d`` of
            ``mean((z - sg[sum_{d' <= d} e_{d'}])^2)``. In training mode the codebooks take one EMA step;
            the quantized output uses the codebooks as they were before that step.
        """
        self.check_latents(latents)
        input_dtype = latents.dtype
        with _fp32_region(latents.device):
            vectors = self.to_code_vectors(latents.float())
            residual = vectors.detach().clone()
            aggregated = torch.zeros_like(vectors)
            codes, losses = [], []
            for depth in range(self.num_quantizers):
                codebook = self.codebook(depth)
                code = codebook.distances(residual).argmin(dim=-1)
                embedding = codebook.embed(code)
                if self.training:
                    codebook.ema_update(residual, code)
                residual.sub_(embedding)
                aggregated.add_(embedding)
                losses.append((vectors - aggregated.detach()).pow(2.0).mean())
                codes.append(code)
            quantized = self.to_latents(aggregated)
            quantized = latents.float() + (quantized - latents.float()).detach()
        return quantized.to(input_dtype), torch.stack(codes, dim=-1), torch.stack(losses).mean()

    @torch.no_grad()
    def soft_codes(
        self,
        latents: torch.Tensor,
        temperature: float = 1.0,
        stochastic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """Soft codes: per depth, ``softmax(-distance / temperature)`` over the residual's codebook distances.

        The residual moves on by the embedding of the argmin code, or of a code drawn from the softmax
        when ``stochastic``.

        Returns:
            soft codes ``(B, h, w, D, K)`` float32 (``K`` = the largest codebook; smaller codebooks are
            zero-padded) and the codes used for the residuals ``(B, h, w, D)``.
        """
        self.check_latents(latents)
        if not temperature > 0:
            raise ValueError(f"temperature: expected a positive float, got {temperature}")
        max_codes = max(self.codebook_sizes)
        with _fp32_region(latents.device):
            residual = self.to_code_vectors(latents.float()).clone()
            soft, codes = [], []
            for depth in range(self.num_quantizers):
                codebook = self.codebook(depth)
                distances = codebook.distances(residual)
                probabilities = F.softmax(-distances / temperature, dim=-1)
                if stochastic:
                    flat = probabilities.reshape(-1, codebook.num_codes)
                    code = torch.multinomial(flat, 1, generator=generator).reshape(probabilities.shape[:-1])
                else:
                    code = distances.argmin(dim=-1)
                residual.sub_(codebook.embed(code))
                soft.append(F.pad(probabilities, (0, max_codes - codebook.num_codes)))
                codes.append(code)
        return torch.stack(soft, dim=-2), torch.stack(codes, dim=-1)

    # -- codes -> embeddings ------------------------------------------------------------------------------
    def codes_to_embeddings(self, codes: torch.LongTensor, cumulative: bool = False) -> torch.Tensor:
        """Codes ``(B, h, w, D')`` with ``D' <= D`` -> per-depth embeddings ``(B, h, w, D', rH*rW*C)`` float32.

        ``cumulative=True`` returns partial sums: entry ``d`` is ``sum_{d' <= d} e_{d'}``.
        """
        self.check_codes(codes, allow_partial_depth=True)
        embeddings = torch.stack(
            [self.codebook(depth).embed(codes[..., depth]) for depth in range(codes.shape[-1])], dim=-2
        )
        return embeddings.cumsum(dim=-2) if cumulative else embeddings

    def decode_codes(self, codes: torch.LongTensor, depth: int | None = None) -> torch.Tensor:
        """Codes ``(B, h, w, D)`` -> quantized latents ``(B, C, h*rH, w*rW)``: the sum of the first ``depth``
        levels (all ``D`` when ``None``)."""
        self.check_codes(codes)
        depth = self.num_quantizers if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.num_quantizers:
            raise ValueError(f"depth: expected an int in 1..{self.num_quantizers}, got {depth!r}")
        return self.to_latents(self.codes_to_embeddings(codes[..., :depth]).sum(dim=-2))

    # -- validation ---------------------------------------------------------------------------------------
    def check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or not latents.is_floating_point():
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents: expected a float tensor (B, {self.latent_dim}, H, W), got {got}")
        _, channels, height, width = latents.shape
        rh, rw = self.patch_size
        if channels != self.latent_dim or height % rh or width % rw:
            raise ValueError(
                f"latents: expected (B, {self.latent_dim}, H, W) with H divisible by {rh} and W by {rw}, "
                f"got {tuple(latents.shape)}"
            )

    def check_codes(self, codes: torch.Tensor, allow_partial_depth: bool = False) -> None:
        if (
            not isinstance(codes, torch.Tensor)
            or codes.ndim != 4
            or codes.dtype not in (torch.int64, torch.int32)
        ):
            got = (
                (tuple(codes.shape), codes.dtype) if isinstance(codes, torch.Tensor) else type(codes).__name__
            )
            raise ValueError(f"codes: expected an int64 tensor (B, h, w, {self.num_quantizers}), got {got}")
        depth = codes.shape[-1]
        if depth != self.num_quantizers and not (allow_partial_depth and 1 <= depth < self.num_quantizers):
            raise ValueError(
                f"codes: expected a last axis of {self.num_quantizers} depths, got shape {tuple(codes.shape)}"
            )
        sizes = torch.tensor(self.codebook_sizes[:depth], device=codes.device)
        out_of_range = (codes < 0) | (codes >= sizes)
        if out_of_range.any():
            raise ValueError(
                f"codes: expected values in [0, K_d) with K = {self.codebook_sizes[:depth]}, got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
