"""rq-hf: RQ-VAE and RQ-Transformer (Lee et al., CVPR 2022) native to diffusers, transformers and accelerate.

Importing the package registers `RQTransformerConfig` / `RQTransformerForImageGeneration` with transformers'
`AutoConfig` / `AutoModel` and makes the pipeline components importable for `RQPipeline.from_pretrained`.
"""

from .configuration_rqtransformer import RQTransformerConfig
from .modeling_rqtransformer import RQTransformerForImageGeneration, RQTransformerOutput
from .modeling_rqvae import RQVAEEncoderOutput, RQVAEModel, RQVAEOutput
from .pipeline_rq import RQPipeline
from .quantizer import ResidualQuantizer

__version__ = "0.1.0"
__all__ = [
    "RQPipeline",
    "RQTransformerConfig",
    "RQTransformerForImageGeneration",
    "RQTransformerOutput",
    "RQVAEEncoderOutput",
    "RQVAEModel",
    "RQVAEOutput",
    "ResidualQuantizer",
]
