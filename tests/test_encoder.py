"""Tests of asdflow.encoder: weights sources, freezing, pyramid shapes, offline errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asdflow import encoder as encoder_module
from asdflow.encoder import BACKBONES, STRIDES, Encoder
from asdflow.errors import ModelError, ParameterError


@pytest.fixture(scope="module")
def resnet18() -> Encoder:
    return Encoder("resnet18", "random", seed=0)


@pytest.fixture
def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 40, 72, generator=generator)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and a download address that refuses connections."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(
        encoder_module, "imagenet_url", lambda backbone: f"http://127.0.0.1:9/{backbone}-0000.pth"
    )
    return tmp_path / "torch"


def test_pyramid_channels_strides_and_shapes(resnet18, image):
    features = resnet18(image)
    assert resnet18.channels == BACKBONES["resnet18"] == (128, 256, 512)
    assert resnet18.strides == STRIDES == (8, 16, 32)
    assert len(features) == 3
    for feature, channels, stride, size in zip(
        features, resnet18.channels, resnet18.strides, resnet18.output_sizes(40, 72), strict=True
    ):
        expected = (math.ceil(40 / stride), math.ceil(72 / stride))
        assert feature.shape == (2, channels, *expected)
        assert size == expected
        assert not feature.requires_grad
        assert torch.isfinite(feature).all()


@pytest.mark.parametrize(("height", "width"), [(158, 313), (158, 626), (158, 63), (33, 65)])
def test_output_sizes_match_the_network(resnet18, height, width):
    features = resnet18(torch.zeros(1, 3, height, width))
    assert [tuple(f.shape[2:]) for f in features] == resnet18.output_sizes(height, width)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (158, 20), (12, 158)])
def test_zero_padding_takes_any_size(height, width):
    zeros = Encoder("resnet18", "random", padding="zeros")
    features = zeros(torch.zeros(1, 3, height, width))
    assert [tuple(f.shape[2:]) for f in features] == zeros.output_sizes(height, width)


def test_reflect_padding_needs_two_layer4_positions_and_says_so(resnet18):
    assert resnet18.padding == "reflect"  # CFLOW-AD's encoder
    assert resnet18.output_sizes(33, 33)[2] == (2, 2)
    resnet18(torch.zeros(1, 3, 33, 33))  # the smallest size that works
    for size in [(32, 158), (158, 32)]:
        with pytest.raises(ModelError, match=r"at least 33 .*padding='zeros'"):
            resnet18(torch.zeros(1, 3, *size))
    # without the check, torch itself refuses to reflect a border wider than the map
    conv = resnet18.layer4[1].conv1
    with pytest.raises(RuntimeError):
        conv(torch.zeros(1, 512, 1, 5))


def test_reflect_padding_is_on_the_stem_and_every_3x3_convolution_only():
    for backbone in BACKBONES:
        network = Encoder(backbone, "random", padding="reflect")
        convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
        modes = {(m.kernel_size, m.padding_mode) for m in convs}
        assert modes == {((7, 7), "reflect"), ((3, 3), "reflect"), ((1, 1), "zeros")}
        assert sum(m.kernel_size == (3, 3) for m in convs) == 16  # one or two per residual block
    zeros = Encoder("resnet18", "random", padding="zeros")
    assert {m.padding_mode for m in zeros.modules() if isinstance(m, torch.nn.Conv2d)} == {"zeros"}
    assert "padding='reflect'" in repr(Encoder("resnet18", "random"))
    with pytest.raises(ParameterError, match="padding"):
        Encoder("resnet18", "random", padding="circular")


def test_reflect_stem_pads_with_the_mirrored_image(resnet18, image):
    # The stem by hand: mirror 3 pixels on each side, then an unpadded 7 x 7 convolution.
    mirrored = torch.nn.functional.pad(image, (3, 3, 3, 3), mode="reflect")
    by_hand = torch.nn.functional.conv2d(mirrored, resnet18.conv1.weight, stride=2)
    with torch.no_grad():
        # the same float32 products summed in the same kernel: identical results
        assert torch.equal(resnet18.conv1(image), by_hand)


def test_padding_changes_the_border_of_the_maps_most(resnet18):
    # Same weights, two paddings: the difference is born at the borders and spreads
    # inwards with the receptive field, so the border rows of layer2 change most.
    zeros = Encoder("resnet18", "random", seed=0, padding="zeros")
    x = torch.randn(1, 3, 158, 63, generator=torch.Generator().manual_seed(1))
    a, b = resnet18(x)[0][0], zeros(x)[0][0]  # (C, 20, 8)
    change = ((a - b).abs().mean(dim=(0, 2)) / b.abs().mean(dim=(0, 2))).numpy()
    assert min(change[0], change[-1]) > 2 * float(np.median(change[1:-1]))


@pytest.mark.slow
def test_wide_resnet_pyramid_of_a_ten_second_feature_image():
    wide = Encoder("wide_resnet50_2", "random", seed=0)
    assert wide.channels == (512, 1024, 2048)
    features = wide(torch.randn(1, 3, 158, 313))
    # DESIGN section 4: 20 x 40, 10 x 20, 5 x 10 at strides 8, 16, 32 (10 s at hop 512).
    assert [tuple(f.shape) for f in features] == [
        (1, 512, 20, 40),
        (1, 1024, 10, 20),
        (1, 2048, 5, 10),
    ]


def test_encoder_is_frozen_and_stays_in_eval_mode(image):
    enc = Encoder("resnet18", "random", seed=0)
    assert all(not p.requires_grad for p in enc.parameters())
    assert not enc.training
    assert enc.train() is enc
    assert not enc.training
    assert all(not m.training for m in enc.modules())

    parent = torch.nn.Sequential(enc, torch.nn.Identity())
    parent.train()
    assert parent.training and not enc.training
    assert all(not m.training for m in enc.modules())

    # Batch-norm statistics do not move when the encoder runs inside a training parent.
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    first = parent(image)
    second = enc(image)
    for key, value in enc.state_dict().items():
        assert torch.equal(value, before[key]), key
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_random_weights_follow_the_seed(resnet18, image):
    a = resnet18
    b = Encoder("resnet18", "random", seed=0)
    c = Encoder("resnet18", "random", seed=1)
    assert torch.equal(a(image)[2], b(image)[2])
    assert not torch.allclose(a(image)[2], c(image)[2])


def test_weights_from_a_local_state_dict_file(tmp_path, resnet18, image):
    path = tmp_path / "resnet18.pt"
    torch.save(resnet18.state_dict(), path)
    loaded = Encoder("resnet18", path)
    assert loaded.weights == str(path)
    for a, b in zip(resnet18(image), loaded(image), strict=True):
        assert torch.equal(a, b)


def test_full_torchvision_state_dict_loads_without_its_classifier(tmp_path, image):
    from torchvision.models import resnet18

    torch.manual_seed(5)
    network = resnet18().eval()
    path = tmp_path / "full.pth"
    torch.save(network.state_dict(), path)
    loaded = Encoder("resnet18", str(path), padding="zeros")  # torchvision's network as it is
    x = image
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
        x = getattr(network, name)(x)
    with torch.no_grad():
        # the same modules with the same weights on the same input: identical results
        assert torch.equal(loaded(image)[1], x)


def test_imagenet_weights_come_from_the_hub_cache(offline_hub, resnet18, image):
    # A file already in the cache is used without any network access.
    cached = encoder_module.weights_cache_path("resnet18")
    assert cached == offline_hub / "hub" / "checkpoints" / "resnet18-0000.pth"
    cached.parent.mkdir(parents=True)
    torch.save(resnet18.state_dict(), cached)
    loaded = Encoder("resnet18", "imagenet", progress=False)
    assert loaded.weights == "imagenet"
    assert torch.equal(loaded(image)[2], resnet18(image)[2])


def test_missing_imagenet_weights_without_network_say_how_to_fix(offline_hub):
    with pytest.raises(ModelError) as info:
        Encoder("resnet18", "imagenet", progress=False)
    message = str(info.value)
    assert "resnet18" in message
    assert "127.0.0.1:9" in message
    assert str(offline_hub / "hub" / "checkpoints" / "resnet18-0000.pth") in message
    assert "weights='random'" in message
    assert "state-dict file" in message
    # Nothing half-downloaded is left in the cache.
    checkpoints = offline_hub / "hub" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


def test_default_imagenet_address_is_torchvisions_v1():
    from torchvision.models import ResNet18_Weights, Wide_ResNet50_2_Weights

    assert encoder_module.imagenet_url("resnet18") == ResNet18_Weights.IMAGENET1K_V1.url
    assert (
        encoder_module.imagenet_url("wide_resnet50_2") == Wide_ResNet50_2_Weights.IMAGENET1K_V1.url
    )


def test_bad_weights_files_and_names_raise(tmp_path, resnet18):
    with pytest.raises(ModelError, match="does not exist"):
        Encoder("resnet18", tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read"):
        Encoder("resnet18", junk)
    partial = tmp_path / "partial.pt"
    state = resnet18.state_dict()
    state.pop("layer4.1.bn2.weight")
    torch.save(state, partial)
    with pytest.raises(ModelError, match="do not fit"):
        Encoder("resnet18", partial)
    with pytest.raises(ParameterError, match="unknown backbone 'vgg16'; choose one of resnet18"):
        Encoder("vgg16", "random")


def test_bad_input_shape_raises(resnet18):
    with pytest.raises(ModelError, match=r"\(B, 3, H, W\)"):
        resnet18(torch.zeros(1, 1, 32, 32))


ENCODER_HASH = """
import hashlib, torch
from asdflow.encoder import Encoder
digest = hashlib.sha256()
for tensor in Encoder("resnet18", weights="random", seed=3).state_dict().values():
    digest.update(tensor.contiguous().numpy().tobytes())
print(digest.hexdigest())
"""


def test_random_weights_are_the_same_on_every_cpu_code_path():
    """torch's own float32 normal draw differs between its AVX2 and plain code paths."""
    import os
    import subprocess
    import sys

    hashes = set()
    for capability in ("default", "avx2"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        done = subprocess.run(
            [sys.executable, "-c", ENCODER_HASH], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        hashes.add(done.stdout.strip())
    assert len(hashes) == 1


def test_random_weights_follow_torchvision_scheme():
    encoder = Encoder("resnet18", weights="random", seed=0)
    conv = encoder.layer3[0].conv1.weight
    fan_out = conv.shape[0] * conv[0, 0].numel()
    expected = (2.0 / fan_out) ** 0.5
    # The sample sd of n normal draws is within 5 / sqrt(2 n) of the true sd (relative).
    assert abs(conv.std().item() / expected - 1) < 5 / (2 * conv.numel()) ** 0.5
    assert abs(conv.mean().item()) < 5 * expected / conv.numel() ** 0.5
    bn = encoder.layer3[0].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    other = Encoder("resnet18", weights="random", seed=1)
    assert not torch.equal(other.layer3[0].conv1.weight, conv)
