"""Photos and training patches, from files installed by ``make data`` and shipped with scikit-image.

Training photos: the Debian wallpaper packages ``mate-backgrounds`` and ``plasma-workspace-wallpapers``
(one file per picture: the packages hold several resolutions of some) plus a few ``skimage.data`` photos;
every 8th of them is held out of training. Test photos are different pictures: OpenCV's sample images
(``opencv-doc``) and ``skimage.data`` photos the training never sees.

Training photos are shrunk to at most ``MAX_SIDE`` pixels a side when loaded: it keeps the training set in
memory and the wallpapers' 4K-5K renders hold little detail per pixel at full size. The sparsity
controller calibrates on the held-out pictures that are photographs (JPEG; the packages' renders and
graphics are PNG), each shrunk to every side in ``CALIBRATION_SIDES``: SR and denoising inputs are small
photos, and a feature's sparsity at a fixed threshold depends on the detail per pixel: thresholds fixed on
renders or big photos gate small test photos less than the level asks (the measured sparsities of each
choice are in docs/featreg.md).

Pairs: SR input = the HR photo downscaled with bicubic (PIL, antialiased), the eval's degradation too;
denoise input = the photo + Gaussian noise of std sigma/255 (not clipped).
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from edgesparse.frontends.calibration import IMAGE_SUFFIXES
from edgesparse.frontends.errors import FrontendError

TRAIN_PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers")
TEST_PACKAGE = "opencv-doc"
TRAIN_SKIMAGE = ("astronaut", "chelsea", "coffee")
TEST_SKIMAGE = ("rocket",)
TEST_OPENCV = (
    "baboon.jpg",
    "butterfly.jpg",
    "fruits.jpg",
    "home.jpg",
    "building.jpg",
    "messi5.jpg",
    "orange.jpg",
    "starry_night.jpg",
    "smarties.png",
    "HappyFish.jpg",
)
MAX_SIDE = 1024
HELD_OUT_EVERY = 8
CALIBRATION_SIDES = (512, 384, 256)
PHOTOGRAPH_SUFFIXES = (".jpg", ".jpeg")


def package_files(package: str) -> list[Path]:
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if listing.returncode != 0:
        raise FrontendError(f"the photos of the Debian package {package} are not installed: run `make data`")
    return [
        Path(line)
        for line in listing.stdout.splitlines()
        if line.lower().endswith(IMAGE_SUFFIXES) and Path(line).is_file()
    ]


def picture_key(path: Path) -> str:
    """One key per picture: plasma keeps its resolutions in <name>/contents/images/WxH.jpg, mate names
    them <name>_WxH.jpg; screenshots and dark variants are not separate pictures."""
    if "contents" in path.parts:
        return path.parts[path.parts.index("contents") - 1]
    return re.sub(r"_\d+x\d+$", "", path.stem)


def training_photo_files() -> list[Path]:
    files = [
        path
        for package in TRAIN_PACKAGES
        for path in package_files(package)
        if "screenshot" not in path.name and "images_dark" not in path.parts
    ]
    largest: dict[str, Path] = {}
    for path in sorted(files):
        key = picture_key(path)
        if key not in largest or path.stat().st_size > largest[key].stat().st_size:
            largest[key] = path
    return [largest[key] for key in sorted(largest)]


def test_photo_files() -> list[Path]:
    # examples/data holds the samples; the HTML docs hold other pictures under some of the same names.
    by_name = {path.name: path for path in package_files(TEST_PACKAGE) if path.parent.name == "data"}
    missing = [name for name in TEST_OPENCV if name not in by_name]
    if missing:
        raise FrontendError(f"{TEST_PACKAGE} lacks {', '.join(missing)}: run `make data`")
    return [by_name[name] for name in TEST_OPENCV]


def load_photo(path: Path, max_side: int | None = MAX_SIDE) -> np.ndarray:
    """RGB uint8 HWC."""
    with Image.open(path) as image:
        if max_side is not None:
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced size straight away
        image = image.convert("RGB")
        if max_side is not None:
            image.thumbnail((max_side, max_side), Image.BICUBIC)
        return np.asarray(image)


def skimage_photo(name: str, max_side: int = MAX_SIDE) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]))
    image.thumbnail((max_side, max_side), Image.BICUBIC)
    return np.asarray(image)


def training_photos() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training photos, the controller's calibration photos: the held-out photographs at every side in
    ``CALIBRATION_SIDES``)."""
    pictures = [
        (path.suffix.lower() in PHOTOGRAPH_SUFFIXES, functools.partial(load_photo, path))
        for path in training_photo_files()
    ]
    pictures += [(True, functools.partial(skimage_photo, name)) for name in TRAIN_SKIMAGE]
    training = [load() for index, (_, load) in enumerate(pictures) if index % HELD_OUT_EVERY]
    calibration = [
        load(side)
        for index, (photograph, load) in enumerate(pictures)
        if index % HELD_OUT_EVERY == 0 and photograph
        for side in CALIBRATION_SIDES
    ]
    return training, calibration


def test_photos() -> dict[str, np.ndarray]:
    """name -> RGB uint8 photo, at full size."""
    photos = {path.stem: load_photo(path, max_side=None) for path in test_photo_files()}
    photos.update({name: skimage_photo(name) for name in TEST_SKIMAGE})
    return photos


def bicubic_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 HWC -> uint8 HWC, PIL's antialiased bicubic."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def crop_to_scale(image: np.ndarray, scale: int) -> np.ndarray:
    return image[: image.shape[0] // scale * scale, : image.shape[1] // scale * scale]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC (or NHWC) -> float NCHW in [0, 1]."""
    array = torch.from_numpy(np.array(image, dtype=np.float32)) / 255.0
    return array.permute(2, 0, 1)[None] if array.dim() == 3 else array.permute(0, 3, 1, 2)


class Degradation:
    """The task's input from a clean photo: bicubic downscale (sr) or additive Gaussian noise (denoise)."""

    def __init__(self, task: str, scale: int = 2, sigma: float = 25.0):
        if task not in ("sr", "denoise"):
            raise FrontendError(f"task {task!r}: expected sr or denoise")
        self.task, self.scale, self.sigma = task, scale, sigma

    @property
    def scale_factor(self) -> int:
        return self.scale if self.task == "sr" else 1

    def prepare(self, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(clean target, input before noise) uint8: SR crops the photo to a multiple of the scale."""
        if self.task == "sr":
            photo = crop_to_scale(photo, self.scale)
            return photo, bicubic_resize(photo, photo.shape[0] // self.scale, photo.shape[1] // self.scale)
        return photo, photo

    def add_noise(self, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.task == "sr":
            return clean
        return clean + torch.randn(clean.shape, generator=generator) * (self.sigma / 255.0)


class PatchSampler:
    """Random (input, target) patch batches from photos, with flips and 90-degree turns; its state (one
    torch generator) goes into checkpoints so a resumed run draws the same batches."""

    def __init__(self, photos: list[np.ndarray], degradation: Degradation, patch: int, batch: int, seed: int):
        self.degradation = degradation
        scale = degradation.scale_factor
        if patch % scale:
            raise FrontendError(f"--patch {patch} is not a multiple of the scale {scale}")
        self.pairs = [degradation.prepare(photo) for photo in photos if min(photo.shape[:2]) >= patch]
        if not self.pairs:
            raise FrontendError(f"no photo is at least {patch} pixels a side")
        self.patch, self.batch = patch, batch
        self.generator = torch.Generator().manual_seed(seed)

    def randint(self, high: int) -> int:
        return int(torch.randint(high, (), generator=self.generator))

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, low_patch = self.degradation.scale_factor, self.patch // self.degradation.scale_factor
        inputs, targets = [], []
        for _ in range(self.batch):
            target, source = self.pairs[self.randint(len(self.pairs))]
            y, x = self.randint(source.shape[0] - low_patch + 1), self.randint(source.shape[1] - low_patch + 1)
            pair = [
                source[y : y + low_patch, x : x + low_patch],
                target[y * scale : y * scale + self.patch, x * scale : x * scale + self.patch],
            ]
            turns, flip = self.randint(4), self.randint(2)
            pair = [np.rot90(array[:, ::-1] if flip else array, turns) for array in pair]
            inputs.append(pair[0])
            targets.append(pair[1])
        clean_input = to_tensor(np.stack(inputs))
        return self.degradation.add_noise(clean_input, self.generator), to_tensor(np.stack(targets))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
