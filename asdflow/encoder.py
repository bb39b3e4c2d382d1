"""The frozen CNN encoder: a three-scale feature pyramid from a torchvision ResNet.

CFLOW-AD does not learn its features: it taps an ImageNet-trained CNN and
models the distribution of what the CNN sees. :class:`Encoder` wraps a
torchvision ResNet, keeps its trunk up to ``layer4`` and returns the outputs
of ``layer2``, ``layer3`` and ``layer4`` at strides 8, 16 and 32.

Two backbones are supported:

========================  =================  ===============================
backbone                  channels           use
========================  =================  ===============================
``"wide_resnet50_2"``     512, 1024, 2048    full mode (the report's choice)
``"resnet18"``            128, 256, 512      quick mode and tests
========================  =================  ===============================

ImageNet weights are torchvision's ``IMAGENET1K_V1`` (the weights of the
original ``pretrained=True`` that CFLOW-AD loads), fetched once into
torch's hub cache (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``).

**Padding.** CFLOW-AD does not run torchvision's network as it is: its
``custom_models/resnet.py`` copies it with ``padding_mode="reflect"`` on the
7 x 7 stem convolution and on every 3 x 3 convolution (the 1 x 1
convolutions have no padding and the max-pool keeps its own), then loads the
same ImageNet weights. Zero padding surrounds the image with a frame of
zeros, which after the row standardisation means "the average value of
every row": the border positions of every map see that frame. Reflect
padding mirrors the image at its borders instead. The report used CFLOW-AD,
so ``padding="reflect"`` is the default; ``"zeros"`` gives torchvision's
network. The choice only matters near the borders, but a 158-row image has
5 rows at ``layer4``, 2 of them on the border. Reflect padding needs at
least two positions at ``layer4``: images of at least
:data:`MIN_REFLECT_SIZE` (33) rows and frames.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from asdflow.errors import ModelError, ParameterError

__all__ = [
    "Encoder",
    "BACKBONES",
    "STRIDES",
    "PADDINGS",
    "MIN_REFLECT_SIZE",
    "imagenet_url",
    "weights_cache_path",
]

#: Channels of the layer2, layer3 and layer4 outputs of each supported backbone.
BACKBONES: dict[str, tuple[int, int, int]] = {
    "wide_resnet50_2": (512, 1024, 2048),
    "resnet18": (128, 256, 512),
}

#: Down-sampling factor of the layer2, layer3 and layer4 outputs.
STRIDES: tuple[int, int, int] = (8, 16, 32)

#: Padding modes of the encoder's 7 x 7 and 3 x 3 convolutions: CFLOW-AD's and torchvision's.
PADDINGS: tuple[str, str] = ("reflect", "zeros")

#: Smallest image side that reflect padding allows. A reflected border needs
#: more positions than it is wide: the 3 x 3 convolutions of ``layer4`` pad by
#: one, so ``layer4`` needs 2 positions, ``ceil(n / 32) >= 2``, ``n >= 33``.
MIN_REFLECT_SIZE: int = 33

#: Modules of a torchvision ResNet that the encoder keeps, in order.
_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ParameterError(
            f"unknown backbone {backbone!r}; choose one of {', '.join(sorted(BACKBONES))}"
        )


def imagenet_url(backbone: str) -> str:
    """Download address of torchvision's ``IMAGENET1K_V1`` weights of ``backbone``."""
    # deferred: torchvision takes seconds to import, and only building an encoder needs it
    from torchvision.models import get_model_weights

    _check_backbone(backbone)
    return get_model_weights(backbone)["IMAGENET1K_V1"].url


def weights_cache_path(backbone: str) -> Path:
    """Where torch's hub cache keeps the ImageNet weights of ``backbone`` once downloaded."""
    url = imagenet_url(backbone)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_state_dict(backbone: str, *, progress: bool) -> dict[str, Tensor]:
    """The ImageNet state dict of ``backbone`` from the hub cache, downloaded if missing."""
    url = imagenet_url(backbone)
    cached = weights_cache_path(backbone)
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=progress, check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError, ValueError) as error:
        raise ModelError(
            f"cannot get the ImageNet weights of {backbone} ({error}). They are downloaded "
            f"once from {url} into {cached}. Fix: run once on a machine with network access "
            f"(or download that file there yourself), or pass weights=<path to a local "
            f"state-dict file>, or pass weights='random' to use an untrained backbone "
            f"explicitly (quick mode)."
        ) from error


def _file_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict read from a local file (tensors only, no pickled code)."""
    if not path.is_file():
        raise ModelError(
            f"weights file {path} does not exist; pass 'imagenet', 'random' or the path "
            "of a state-dict file saved with torch.save(model.state_dict(), path)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a bad file
        raise ModelError(f"cannot read weights file {path}: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(
            f"weights file {path} does not hold a state dict (a mapping of names to tensors)"
        )
    return state


def _random_init(network: nn.Module, seed: int) -> None:
    """torchvision's ResNet initialisation, drawn so that every machine gets the same weights.

    torchvision draws each convolution from a normal distribution with
    standard deviation ``sqrt(2 / fan_out)`` ("Kaiming normal, fan out, ReLU",
    He et al., 2015) and sets batch normalisation to the identity
    (scale 1, shift 0, running mean 0, variance 1). Drawn with torch, the
    float32 normal numbers depend on the CPU's vector instructions (torch
    has a separate AVX2 code path), so a detector trained on one machine
    would meet another encoder on the next. NumPy's generator gives the same
    float64 numbers on every platform; they are rounded to float32 here. The
    classifier ``fc`` is not part of the encoder and keeps torch's draw.
    """
    rng = np.random.default_rng(seed)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            weight = module.weight
            fan_out = weight.shape[0] * weight[0, 0].numel()
            values = rng.standard_normal(tuple(weight.shape)) * np.sqrt(2.0 / fan_out)
            with torch.no_grad():
                weight.copy_(torch.from_numpy(values).to(weight.dtype))
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()


def _set_padding(network: nn.Module, padding: str) -> None:
    """Pad every convolution wider than 1 x 1 with ``padding`` (CFLOW-AD: "reflect").

    The stem's 7 x 7 convolution and every 3 x 3 convolution pad their
    input; the 1 x 1 convolutions do not. ``nn.Conv2d`` keeps its padding
    widths whatever the mode, and pads with ``padding_mode`` in its forward
    pass, so only the mode changes here (not the weights).
    """
    for module in network.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
            module.padding_mode = padding  # type: ignore[assignment]  # checked: PADDINGS


class Encoder(nn.Module):
    """A frozen ResNet that turns an image into a three-scale feature pyramid.

    The network is always in eval mode (batch-norm uses its stored
    statistics) and its parameters never require gradients: calling
    ``.train()`` on it, or on a module that contains it, leaves it in eval
    mode.

    For a 158 x 313 feature image (a 10 s clip at hop 512) the outputs are,
    measured:

    - ``wide_resnet50_2``: (B, 512, 20, 40), (B, 1024, 10, 20), (B, 2048, 5, 10);
    - ``resnet18``: (B, 128, 20, 40), (B, 256, 10, 20), (B, 512, 5, 10).

    Every stride-2 stage maps a side of length ``n`` to ``ceil(n / 2)``;
    :meth:`output_sizes` gives the sizes without running the network.

    Parameters
    ----------
    backbone : {"wide_resnet50_2", "resnet18"}
        The torchvision ResNet to use.
    weights : "imagenet", "random" or path
        ``"imagenet"``: torchvision's ImageNet weights (from the hub cache;
        downloaded once, which needs network access). ``"random"``:
        torchvision's random initialisation scheme, drawn with ``seed`` by
        NumPy so that every machine draws the same weights (say so when
        reporting results; see :func:`_random_init`). A path: a local file written by
        ``torch.save(model.state_dict(), path)`` for the same backbone
        (keys of the classifier ``fc`` are ignored).
    padding : {"reflect", "zeros"}
        How the 7 x 7 and 3 x 3 convolutions pad their input: ``"reflect"``
        (CFLOW-AD's encoder, the default) or ``"zeros"`` (torchvision's).
        The weights are the same either way.
    seed : int
        Seed of the random initialisation (used when ``weights="random"``).
    progress : bool
        Show a progress bar while downloading ImageNet weights.

    Attributes
    ----------
    backbone : str
    weights : str
        ``"imagenet"``, ``"random"`` or the path as a string.
    padding : str
    channels : tuple of int
        Channels of the three outputs.
    strides : tuple of int
        ``(8, 16, 32)``: down-sampling factor of the three outputs.

    Raises
    ------
    ParameterError
        Unknown backbone or padding.
    ModelError
        ImageNet weights neither cached nor downloadable;
        unreadable weights file or one that does not fit the backbone.

    Examples
    --------
    >>> import torch
    >>> from asdflow.encoder import Encoder
    >>> encoder = Encoder("resnet18", weights="random")
    >>> [tuple(f.shape) for f in encoder(torch.zeros(1, 3, 158, 63))]
    [(1, 128, 20, 8), (1, 256, 10, 4), (1, 512, 5, 2)]
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        weights: str | os.PathLike[str] = "imagenet",
        *,
        padding: str = "reflect",
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__()
        # deferred: torchvision takes seconds to import, and only building an encoder needs it
        from torchvision.models import get_model

        _check_backbone(backbone)
        if padding not in PADDINGS:
            raise ParameterError(
                f"unknown padding {padding!r}; choose 'reflect' (CFLOW-AD) or 'zeros' (torchvision)"
            )
        self.backbone = backbone
        self.padding = padding
        self.channels: tuple[int, int, int] = BACKBONES[backbone]
        self.strides: tuple[int, int, int] = STRIDES

        if weights == "imagenet":
            state = _imagenet_state_dict(backbone, progress=progress)
        elif weights == "random":
            state = None
        else:
            state = _file_state_dict(Path(weights))
        self.weights = str(weights)

        network = get_model(backbone, weights=None)
        if state is None:
            _random_init(network, seed)
        _set_padding(network, padding)
        for name in _TRUNK:
            self.add_module(name, getattr(network, name))

        if state is not None:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            try:
                self.load_state_dict(state, strict=True)
            except RuntimeError as error:
                raise ModelError(
                    f"weights {self.weights} do not fit backbone {backbone}: {error}"
                ) from error

        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Encoder:
        """Keep eval mode whatever ``mode`` is: the encoder is frozen."""
        return super().train(False)

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone!r}, weights={self.weights!r}, padding={self.padding!r}, "
            "frozen"
        )

    @torch.no_grad()
    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature pyramid of a batch of images.

        Parameters
        ----------
        x : Tensor [shape=(B, 3, H, W)]
            Images (in asdflow: the standardised feature image repeated on
            three channels).

        Returns
        -------
        features : list of 3 Tensors
            Outputs of layer2, layer3 and layer4, shapes
            ``(B, channels[k], ceil(H / strides[k]), ceil(W / strides[k]))``.
            They carry no gradient.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ModelError(
                f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}; "
                "repeat a one-channel image on three channels"
            )
        if self.padding == "reflect" and min(x.shape[2:]) < MIN_REFLECT_SIZE:
            raise ModelError(
                f"an image of {x.shape[2]} rows x {x.shape[3]} frames is too small for the "
                f"reflect-padded encoder, which needs at least {MIN_REFLECT_SIZE} of each "
                "(two positions at layer4). Fix: use longer clips (33 frames are 1.06 s at "
                "hop 512) or more rows, or padding='zeros'"
            )
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1"):
            x = getattr(self, name)(x)
        features = []
        for name in ("layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            features.append(x)
        return features

    def output_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Spatial sizes of the three outputs for an input of ``height x width``.

        Returns
        -------
        sizes : list of 3 (rows, columns) tuples
            Each stride-2 stage (conv1, max-pool, layer2, layer3, layer4)
            maps ``n`` to ``ceil(n / 2)``.
        """
        sizes = []
        h, w = height, width
        for stage in range(5):
            h, w = -(-h // 2), -(-w // 2)
            if stage >= 2:
                sizes.append((h, w))
        return sizes
