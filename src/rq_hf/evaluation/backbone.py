"""The feature-extractor contract and the standard FID Inception-v3 backbone (torchmetrics / torch-fidelity).

Contract: a feature extractor is any ``torch.nn.Module`` called as ``extractor(images)`` where ``images`` is
one batch exactly as the caller passed it to the metric functions, after validation: (B, 3, H, W), either
float in [0, 1] or uint8 in [0, 255], on the device of the module's first parameter (CPU without one). It
returns finite features of shape (B, F), any float dtype; they are accumulated in float64 on the CPU. A
classifier for the Inception Score follows the same contract and returns logits (B, C).

The command line (``rq-hf evaluate``, ``rq-hf stats``) names its extractor with ``--feature-extractor SPEC``,
loaded by :func:`load_feature_extractor`: an import path ``package.module:factory`` or a file
``path/to/file.py:factory``, where ``factory()`` (no arguments) returns the extractor, or a pair
``(extractor, head)`` whose ``head`` maps the extractor's (B, F) features (float32) to (B, C) logits for the
Inception Score. Without ``SPEC`` it is the FID Inception and its 1008-way classifier layer.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from ._checks import Images, check_images, check_module, iter_image_batches, run_extractor

INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
"""Where torch-fidelity (and so torchmetrics) downloads the FID Inception weights on first use."""

RESIZE_MODES = ("bilinear", "tf1")
INCEPTION_OUTPUTS = ("pool", "logits")


class InceptionFeatureExtractor(nn.Module):
    """The FID Inception-v3 (TensorFlow 2015-12-05 graph weights) wrapped to follow the package contract.

    ``forward(images)``: images (B, 3, H, W) float in [0, 1] or uint8 in [0, 255]; float images are rounded
    to uint8 (``round(255 x)``, the same as saving them as PNG) because the network takes uint8 input. It
    returns the (B, 2048) pool3 features (``output="pool"``, for FID) or the (B, 1008) logits of the
    classifier with its bias (``output="logits"``, for the Inception Score, as the original's ``get_logits``).

    Args:
        network: torchmetrics' ``NoTrainInceptionV3`` built with ``features_list=["2048"]`` (see
            :func:`load_inception`); its ``fc`` layer gives the logits.
        output: ``"pool"`` or ``"logits"``.
    """

    def __init__(self, network: nn.Module, output: str = "pool") -> None:
        super().__init__()
        check_module(network, "network")
        if not isinstance(getattr(network, "fc", None), nn.Linear):
            raise TypeError(
                f"network: expected an Inception network with an `fc` layer, got {type(network).__name__}"
            )
        if output not in INCEPTION_OUTPUTS:
            raise ValueError(f"output: expected one of {INCEPTION_OUTPUTS}, got {output!r}")
        self.network = network
        self.output = output
        self.num_features = network.fc.in_features if output == "pool" else network.fc.out_features

    def with_output(self, output: str) -> InceptionFeatureExtractor:
        """The same network (shared, not copied) with another ``output``."""
        return InceptionFeatureExtractor(self.network, output)

    def forward(self, images: Tensor) -> Tensor:
        images = check_images(images, "images")
        if images.dtype != torch.uint8:
            images = images.float().mul(255.0).round().to(torch.uint8)
        features = self.network(images)
        return self.network.fc(features) if self.output == "logits" else features


def load_inception(
    inception_weights: str | os.PathLike | None = None, *, output: str = "pool", resize: str = "bilinear"
) -> InceptionFeatureExtractor:
    """Load the standard FID Inception-v3 through torchmetrics (which builds torch-fidelity's network).

    Args:
        inception_weights: a local copy of ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity) or
            of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the file the original release used;
            same SHA-256 prefix in the name, same state-dict keys). ``None`` downloads it on first use
            into the torch hub cache (``$TORCH_HOME/hub/checkpoints``) from :data:`INCEPTION_WEIGHTS_URL`.
        output: ``"pool"`` (B, 2048) features for FID or ``"logits"`` (B, 1008) for the Inception Score.
        resize: how images are resized to 299 x 299: ``"bilinear"`` (PyTorch bilinear, half-pixel centres,
            antialiased: for inputs up to 299 px identical to the original release's resize) or ``"tf1"``
            (TensorFlow 1 legacy bilinear, as the TF FID code and torch-fidelity do).

    Returns:
        An :class:`InceptionFeatureExtractor` in eval mode on the CPU (move it with ``.to(device)``).

    Raises:
        ModuleNotFoundError: ``torch-fidelity`` is not installed (it brings ``torchvision``).
        ValueError: ``inception_weights`` is not a file, or a bad ``output`` / ``resize``.
        OSError: the download failed (offline machine): pass ``inception_weights``.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize: expected one of {RESIZE_MODES}, got {resize!r}")
    if output not in INCEPTION_OUTPUTS:
        raise ValueError(f"output: expected one of {INCEPTION_OUTPUTS}, got {output!r}")
    if inception_weights is not None and not Path(inception_weights).is_file():
        raise ValueError(
            f"inception_weights: expected the path of a .pth file, got {str(inception_weights)!r}"
        )
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ModuleNotFoundError(
            "load_inception: the standard FID Inception network needs the `torch-fidelity` package "
            "(torchmetrics builds it from there; it brings torchvision): pip install torch-fidelity. Any "
            "nn.Module feature extractor can be passed instead."
        )
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        network = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=None if inception_weights is None else str(inception_weights),
            antialias=resize == "bilinear",
        )
    except OSError as error:
        raise OSError(
            f"load_inception: could not download the FID Inception weights ({error}); on an offline machine "
            f"pass inception_weights=PATH to a local copy of {INCEPTION_WEIGHTS_URL}"
        ) from error
    return InceptionFeatureExtractor(network, output)


def extract_features(images: Images, feature_extractor: nn.Module, *, batch_size: int = 50) -> Tensor:
    """Run ``feature_extractor`` over a set of images.

    Args:
        images: (N, 3, H, W) float in [0, 1] or uint8, or an iterable of such batches.
        feature_extractor: an ``nn.Module`` following the module contract.
        batch_size: batch size when ``images`` is one tensor.

    Returns:
        Features (N, F), float64 on the CPU.
    """
    check_module(feature_extractor, "feature_extractor")
    batches = iter_image_batches(images, "images", batch_size=batch_size)
    return torch.cat([run_extractor(feature_extractor, batch, "feature_extractor") for batch in batches])


def _import_factory(spec: str):
    """The callable named by ``package.module:name`` or ``path/to/file.py:name``."""
    expected = "feature_extractor: expected 'package.module:factory' or 'path/to/file.py:factory'"
    target, _, name = spec.rpartition(":")
    if not target or not name.isidentifier():
        raise ValueError(f"{expected}, got {spec!r}")
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{expected}, got {spec!r} (no file {target})")
        if str(path.parent) not in sys.path:  # as when the file is run as a script: its neighbours import
            sys.path.insert(0, str(path.parent))
        module_name = f"_rq_hf_feature_extractor_{path.stem}"
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as error:
            raise ValueError(f"{expected}, got {spec!r} ({error})") from error
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"{expected}, got {spec!r} (no callable {name!r} in {target})")
    return factory


def load_feature_extractor(
    spec: str | None = None, *, inception_weights: str | os.PathLike | None = None
) -> tuple[nn.Module, nn.Module | None]:
    """The feature extractor and the optional classifier head of the command line, in eval mode on the CPU.

    Args:
        spec: ``None`` for the standard FID Inception (:func:`load_inception`), or ``"package.module:factory"``
            / ``"path/to/file.py:factory"`` (a file is imported as a script runs: its folder first on
            ``sys.path``). ``factory()`` is called without arguments and returns an ``nn.Module`` following
            the contract (module docstring), or a pair ``(extractor, head)``: ``head`` an ``nn.Module``
            mapping the extractor's features (B, F), float32 on the head's device, to logits (B, C) for the
            Inception Score, or ``None``.
        inception_weights: the Inception weight file (only without ``spec``), see :func:`load_inception`.

    Returns:
        ``(extractor, head)``; ``head`` is ``None`` when the factory gives none (no Inception Score). For the
        Inception: the ``"pool"`` extractor and its ``fc`` layer, so one forward pass gives features and logits
        equal to ``load_inception(output="logits")``'s.
    """
    if spec is None:
        extractor = load_inception(inception_weights)
        return extractor, extractor.network.fc
    if inception_weights is not None:
        raise ValueError("inception_weights: expected None with a custom feature extractor, got a path")
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a string 'package.module:factory', got {type(spec).__name__}")
    made = _import_factory(spec)()
    extractor, head = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    check_module(extractor, f"{spec} extractor")
    if head is not None:
        check_module(head, f"{spec} head")
        head.eval()
    return extractor.eval(), head
