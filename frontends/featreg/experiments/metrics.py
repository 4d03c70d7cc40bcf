"""PSNR and SSIM as SR papers report them: on the luma Y (ITU-R BT.601, [16, 235]) of 8-bit images, with
``border`` pixels cropped from each side (the scale for SR, 0 for denoising); SSIM with the 11x11 Gaussian
window of Wang et al. (sigma 1.5, population covariance)."""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

BT601 = np.array([65.481, 128.553, 24.966]) / 255.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] CHW or HWC -> uint8 HWC, rounded like a saved image."""
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def luma(image: np.ndarray, border: int) -> np.ndarray:
    y = 16.0 + image.astype(np.float64) @ BT601
    return y[border : y.shape[0] - border, border : y.shape[1] - border] if border else y


def psnr_y(image: np.ndarray, reference: np.ndarray, border: int = 0) -> float:
    return float(peak_signal_noise_ratio(luma(reference, border), luma(image, border), data_range=255.0))


def ssim_y(image: np.ndarray, reference: np.ndarray, border: int = 0) -> float:
    return float(
        structural_similarity(
            luma(reference, border),
            luma(image, border),
            data_range=255.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )
