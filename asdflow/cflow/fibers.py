"""From feature images to fibers: the encoder, its pyramid, and the fiber bank CFlow trains on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from asdflow.cflow.config import CFlowConfig
from asdflow.encoder import Encoder
from asdflow.errors import ModelError
from asdflow.flows import positional_encoding

_GROUP = 16  # images handled together (encoded one by one, decoded together)


# ---------------------------------------------------------------------------
# The encoder pyramid as a bank of fibers
# ---------------------------------------------------------------------------


def feature_fibers(features: Tensor) -> Tensor:
    """Feature maps to fibers: one row per image and position, the channels as columns.

    Parameters
    ----------
    features : Tensor [shape=(b, c, h, w)]
        One scale of the encoder pyramid.

    Returns
    -------
    Tensor [shape=(b * h * w, c)]
        Position-major within an image (row ``i * h * w + y * w + x`` is
        image ``i`` at position ``(y, x)``), the order of :func:`fiber_conditions`.

    Examples
    --------
    >>> maps = torch.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)
    >>> fibers = feature_fibers(maps)
    >>> fibers.shape
    torch.Size([8, 3])
    >>> bool(torch.equal(fibers[5], maps[1, :, 0, 1]))
    True
    """
    b, c, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(b * h * w, c)


def fiber_conditions(height: int, width: int, dim: int, *, positional: bool = True) -> Tensor:
    """The condition vector of every position of one image, in the order of :func:`feature_fibers`.

    Parameters
    ----------
    height, width : int
        Size of the feature map.
    dim : int
        Length of each condition vector (``CFlowConfig.cond_dim``).
    positional : bool
        False: zeros (the ablation without positional encoding).

    Returns
    -------
    Tensor [shape=(height * width, dim), dtype=float32]
        Row ``y * width + x``: :func:`asdflow.flows.positional_encoding` at ``(y, x)``.

    Examples
    --------
    >>> from asdflow.flows import positional_encoding
    >>> codes = fiber_conditions(2, 3, 8)
    >>> codes.shape
    torch.Size([6, 8])
    >>> bool(torch.equal(codes[4], positional_encoding(2, 3, 8)[:, 1, 1]))
    True
    """
    if not positional:
        return torch.zeros(height * width, dim)
    pe = positional_encoding(height, width, dim, dtype=torch.float32)
    return pe.permute(1, 2, 0).reshape(height * width, dim)


def _encoder_input(images: Sequence[np.ndarray]) -> Tensor:
    """Standardised (rows, frames) images to a (B, 3, rows, frames) float32 batch."""
    batch = torch.from_numpy(np.stack(images).astype(np.float32, copy=False))
    return batch[:, None].expand(-1, 3, -1, -1).contiguous()


def _encode_each(
    encoder: nn.Module, images: Sequence[np.ndarray], device: torch.device
) -> list[Tensor]:
    """Encoder pyramid of same-size images, each image run through the encoder alone.

    A convolution's result for one image can differ in the last bits with
    the batch it is computed in; one image per pass makes a clip's features,
    hence its score, independent of the clips scored with it.

    Returns
    -------
    list of Tensor [shape=(B, C_l, H_l, W_l)]
    """
    with torch.no_grad():
        outputs = [encoder(_encoder_input([image]).to(device)) for image in images]
    return [torch.cat([out[s] for out in outputs]) for s in range(len(outputs[0]))]


def _size_batches(images: Sequence[np.ndarray], batch: int) -> Iterator[list[int]]:
    """Indices of images, in batches of at most ``batch`` images of one size."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    for members in groups.values():
        for start in range(0, len(members), batch):
            yield members[start : start + batch]


@dataclass
class FiberBank:
    """The encoder pyramid of the training images, stored as fibers.

    Memory: with WideResNet-50-2 and 1000 images of 158 x 313 (10 s at hop
    512) the pyramid holds 1000 x (512 x 20 x 40 + 1024 x 10 x 20 + 2048 x
    5 x 10) = 7.2e8 values: 2.9 GB in float32, 1.4 GB in float16 (twice
    that at hop 256). The bank keeps float16
    (relative rounding error below 5e-4, far below the spread of the
    features), on the GPU when it fits in half the free GPU memory, else in
    CPU memory (the training loop then gathers each batch of 256 fibers on
    the CPU and moves it to the GPU); each step converts its batch to
    float32. The scoring path rounds features to float16 the same way, so a
    training clip scores the same from the bank and from
    :meth:`CFlowDetector.score_samples`.

    Attributes
    ----------
    fibers : list of Tensor [shape=(E_l, C_l), dtype=float16]
        Per scale, all fibers of all images, image after image, positions
        row-major within an image.
    cond_index : list of Tensor [shape=(E_l,), dtype=int64]
        Per scale, the row of ``cond_table[l]`` that conditions each fiber.
    cond_table : list of Tensor [shape=(K_l, cond_dim), dtype=float32]
        Per scale, the positional encodings of every position of every
        feature-map size met.
    offsets : list of np.ndarray [shape=(n + 1,)]
        Per scale, where each image's fibers start in ``fibers[l]``.
    map_shapes : list of list of (int, int)
        Per image, the (H_l, W_l) of its feature map at each scale.
    image_shapes : list of (int, int)
        Per image, its size (rows, frames).
    """

    fibers: list[Tensor]
    cond_index: list[Tensor]
    cond_table: list[Tensor]
    offsets: list[np.ndarray]
    map_shapes: list[list[tuple[int, int]]]
    image_shapes: list[tuple[int, int]]

    @property
    def n_fibers(self) -> list[int]:
        """Number of fibers at each scale."""
        return [int(f.shape[0]) for f in self.fibers]

    @property
    def nbytes(self) -> int:
        """Memory taken by the fibers, in bytes."""
        return sum(f.numel() * f.element_size() for f in self.fibers)


def _probe(
    encoder: nn.Module, image_shape: tuple[int, ...], device: torch.device
) -> tuple[list[int], list[tuple[int, int]]]:
    """Channels and feature-map size (H_l, W_l) of each scale for one image size."""
    with torch.no_grad():
        outputs = encoder(torch.zeros((1, 3, *image_shape), device=device))
    return [int(o.shape[1]) for o in outputs], [(int(o.shape[2]), int(o.shape[3])) for o in outputs]


def encode_fibers(
    encoder: nn.Module,
    images: Sequence[np.ndarray],
    *,
    cond_dim: int = 128,
    positional: bool = True,
    device: torch.device | str = "cpu",
    store: torch.device | str | None = None,
    progress: bool = False,
) -> FiberBank:
    """Run a frozen encoder once over standardised images and keep every fiber.

    Parameters
    ----------
    encoder : nn.Module
        Returns a list of (B, C_l, H_l, W_l) feature maps for a (B, 3, rows,
        frames) batch (:class:`asdflow.encoder.Encoder`).
    images : sequence of np.ndarray [shape=(rows, frames), dtype=float32]
        Standardised feature images (sizes may differ).
    cond_dim : int
        Length of the positional encoding.
    positional : bool
        False: every condition is a vector of zeros (the ablation
        ``CFlowConfig(positional_encoding=False)``).
    device : torch.device or str
        Where the encoder runs.
    store : torch.device or str or None
        Where the bank is kept; None: on ``device`` if it is a GPU with room
        for the bank in half its free memory, else on the CPU.
    progress : bool
        Show a progress bar.

    Returns
    -------
    FiberBank
    """
    if not images:
        raise ModelError("no images to encode")
    device = torch.device(device)
    image_shapes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    shapes_of: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for shape in image_shapes:
        if shape not in shapes_of:
            channels, shapes_of[shape] = _probe(encoder, shape, device)
    map_shapes = [shapes_of[s] for s in image_shapes]
    n_scales = len(channels)

    # Positional-encoding tables: one block of rows per feature-map size.
    cond_table, cond_start = [], []
    for s in range(n_scales):
        starts: dict[tuple[int, int], int] = {}
        rows: list[Tensor] = []
        total = 0
        for shapes in shapes_of.values():
            hw = shapes[s]
            if hw not in starts:
                starts[hw] = total
                rows.append(fiber_conditions(hw[0], hw[1], cond_dim, positional=positional))
                total += hw[0] * hw[1]
        cond_table.append(torch.cat(rows))
        cond_start.append(starts)

    sizes = [np.array([0] + [m[s][0] * m[s][1] for m in map_shapes]) for s in range(n_scales)]
    offsets = [np.cumsum(sz) for sz in sizes]
    nbytes = sum(int(offsets[s][-1]) * channels[s] * 2 for s in range(n_scales))
    if store is None:
        store = torch.device("cpu")
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes < free // 2:
                store = device
    store = torch.device(store)

    fibers = [
        torch.empty((int(offsets[s][-1]), channels[s]), dtype=torch.float16, device=store)
        for s in range(n_scales)
    ]
    cond_index = []
    for s in range(n_scales):
        parts = [
            cond_start[s][m[s]] + torch.arange(m[s][0] * m[s][1], dtype=torch.int64)
            for m in map_shapes
        ]
        cond_index.append(torch.cat(parts).to(store))

    bar = tqdm(total=len(images), desc="encoding", unit="clip", disable=not progress)
    with torch.no_grad():
        for members in _size_batches(images, _GROUP):
            outputs = _encode_each(encoder, [images[i] for i in members], device)
            for s, out in enumerate(outputs):
                flat = feature_fibers(out).to(torch.float16)
                per_image = flat.shape[0] // len(members)
                for j, i in enumerate(members):
                    start = int(offsets[s][i])
                    fibers[s][start : start + per_image] = flat[j * per_image : (j + 1) * per_image]
            bar.update(len(members))
    bar.close()
    for s in range(n_scales):
        if not torch.isfinite(fibers[s]).all():
            raise ModelError(
                f"the encoder's scale-{s} features overflow float16 (|x| > 65504) or are "
                "not finite; check the input images and the encoder weights"
            )
    return FiberBank(
        fibers=fibers,
        cond_index=cond_index,
        cond_table=[t.to(store) for t in cond_table],
        offsets=offsets,
        map_shapes=map_shapes,
        image_shapes=image_shapes,
    )


# ---------------------------------------------------------------------------
# Small helpers: encoders, files
# ---------------------------------------------------------------------------


def _fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer of ``module`` (float32 bytes, in order)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        value = tensor.detach().to("cpu")
        if value.is_floating_point():
            value = value.float()
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_encoder(config: CFlowConfig, *, progress: bool = False) -> nn.Module:
    """The frozen encoder of ``config``; random weights are drawn from ``encoder_seed``."""
    return Encoder(
        backbone=config.backbone,
        weights=config.weights,
        padding=config.padding,
        seed=config.encoder_seed,
        progress=progress,
    )
