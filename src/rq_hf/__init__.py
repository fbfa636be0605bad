"""rq-hf: RQ-VAE and RQ-Transformer (Lee et al., CVPR 2022) native to diffusers, transformers and accelerate."""

from .modeling_rqvae import RQVAEEncoderOutput, RQVAEModel, RQVAEOutput
from .quantizer import ResidualQuantizer

__version__ = "0.1.0"
