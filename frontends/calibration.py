"""Calibration inputs: real data run through a model to measure what a pass needs (e.g. feature sparsity).

A calibration source is a directory of photos (PNG/JPEG) or of ``.npz`` files (one sample each, arrays by
input name), or a single ``.npz``. Photos become one-input samples shaped like the model's static input:
RGB (or grey for a one-channel input) in [0, 1], NCHW, center-cropped to the input size, after an upscale
when the photo is smaller.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
from PIL import Image

from edgesparse.frontends.errors import FrontendError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(directory: Path, also: tuple[str, ...] = ()) -> list[Path]:
    """The PNG/JPEG files in ``directory`` (and those ending in one of ``also``), sorted by name."""
    return sorted(path for path in directory.iterdir() if path.suffix.lower() in (*IMAGE_SUFFIXES, *also))


def load_calibration_inputs(
    source: str | os.PathLike, model: ir.Model, limit: int | None = None
) -> list[dict[str, np.ndarray]]:
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        files = [source]
    elif source.is_dir():
        files = image_files(source, also=(".npz",))
    else:
        raise FrontendError(f"--calibrate {source}: no such directory or .npz file")
    if not files:
        raise FrontendError(f"--calibrate {source}: no PNG, JPEG or .npz files in it")
    return [load_sample(path, model) for path in files[:limit]]


def load_sample(path: Path, model: ir.Model) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        return check_sample(path, load_npz(path), model)
    if len(model.graph.inputs) != 1:
        raise FrontendError(f"--calibrate {path}: photos calibrate one-input models only; give .npz samples")
    value = model.graph.inputs[0]
    batch, channels, height, width = value.shape
    if channels not in (1, 3):
        raise FrontendError(f"--calibrate {path}: the model's input has {channels} channels; photos give 1 or 3")
    try:
        image = Image.open(path).convert("RGB" if channels == 3 else "L")
    except OSError as exc:
        raise FrontendError(f"--calibrate {path}: cannot read the image ({exc})") from None
    pixels = center_crop(image, height, width)
    array = np.asarray(pixels, dtype=np.float32).reshape(height, width, channels).transpose(2, 0, 1) / 255.0
    return {value.name: np.broadcast_to(array, (batch, channels, height, width)).copy()}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as archive:
            return dict(archive)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise FrontendError(f"--calibrate {path}: not an .npz archive ({exc})") from None


def check_sample(path: Path, sample: dict[str, np.ndarray], model: ir.Model) -> dict[str, np.ndarray]:
    """An .npz sample holds one float array per model input, by name, shaped as the input (where fixed)."""
    inputs = {value.name: value for value in model.graph.inputs}
    if set(sample) != set(inputs):
        raise FrontendError(
            f"--calibrate {path}: holds arrays {', '.join(map(repr, sample)) or 'none'}, the model's inputs are "
            f"{', '.join(map(repr, inputs))}"
        )
    for name, array in sample.items():
        if array.dtype.kind != "f":
            raise FrontendError(f"--calibrate {path}: array {name!r} is {array.dtype}, the model takes floats")
        shape = inputs[name].shape
        if shape is not None and (
            len(shape) != array.ndim
            or any(isinstance(dim, int) and dim != size for dim, size in zip(shape, array.shape))
        ):
            raise FrontendError(
                f"--calibrate {path}: array {name!r} has shape {list(array.shape)}, the model's input {list(shape)}"
            )
    return sample


def center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    scale = max(height / image.height, width / image.width, 1.0)
    if scale > 1.0:
        image = image.resize((round(image.width * scale + 0.5), round(image.height * scale + 0.5)), Image.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))
