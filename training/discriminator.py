"""PatchGAN discriminator and the GAN terms of the RQ-VAE training objective (`train_rqvae.py`).

Why it is written here: none of the installed libraries has an image discriminator (diffusers, transformers
and accelerate ship none; the original took pix2pix's network through taming-transformers, which is not a
pip package), and the recipe needs exactly that network: 4x4 convolutions, LeakyReLU(0.2), BatchNorm, one
logit per overlapping patch. It is training-only code, so it lives next to the script, not in `rq_hf`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PatchGANDiscriminator(nn.Module):
    """pix2pix's PatchGAN: images `(B, C, H, W)` in [-1, 1] -> patch logits `(B, 1, h, w)`.

    Args:
        in_channels: image channels.
        channels: filters of the first convolution (`ndf`); doubled per layer, at most 8x.
        num_layers: stride-2 convolutions (the original RQ-VAE recipe: 2).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for index in range(1, num_layers + 1):
            out_width = channels * min(2**index, 8)
            stride = 2 if index < num_layers else 1
            layers += [
                nn.Conv2d(width, out_width, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_width),
                nn.LeakyReLU(0.2),
            ]
            width = out_width
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(
        self, fake: torch.Tensor, real: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of `fake` and, when given, of `real`; the two batches are normalised separately (BatchNorm
        statistics of each batch alone), in one call so that DDP sees one forward per backward."""
        return self.layers(fake), None if real is None else self.layers(real)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """`(mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))) / 2`."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """`-mean(D(fake))`."""
    return -logits_fake.float().mean()


def adaptive_gan_weight(
    reconstruction_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor
) -> torch.Tensor:
    """VQGAN's balance `||grad_last(reconstruction)|| / (||grad_last(gan)|| + 1e-4)`, clamped to [0, 1e4] and
    detached; `last_layer` is the decoder's output convolution weight."""
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = reconstruction_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach()
