"""Grid (checkerboard) texture as a number: how much the image spectrum peaks at the periods of a
generator's upsampling and of pooled feature grids, relative to real images.

A pattern that repeats every p pixels puts its energy at the spatial frequencies that are multiples
of S/p (S = image side), on both axes. At each such frequency we take the power over the mean power
of its four neighbours (a smooth spectrum gives about 1, a periodic texture a peak), average that
over the frequencies of the period, and divide by the same number for real images. 1.0 = as peaked
as real scenes; 2.0 = twice the relative energy at the grid's frequencies.
"""

from __future__ import annotations

import numpy as np
import torch

LUMINANCE = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)


def power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, S, S] -> mean power spectrum [S, S] of their luminance, each image's mean removed
    (differentiable: the pyramid generator's spectral term uses it too)."""
    gray = torch.einsum("bchw,c->bhw", images, LUMINANCE.to(images))
    gray = gray - gray.mean((1, 2), keepdim=True)
    return torch.fft.fft2(gray).abs().pow(2).mean(0)


def image_power_spectrum(images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] -> power_spectrum of the images in [0, 1], float64."""
    return power_spectrum(torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255).numpy()


def grid_frequencies(size: int, period: int) -> np.ndarray:
    """[K, 2] frequency bins (u, v) of a pattern with this period: multiples of size/period, not (0, 0)."""
    if size % period or period < 2:
        raise ValueError(f"period {period} must divide the image side {size} and be at least 2")
    steps = np.arange(0, size, size // period)
    u, v = np.meshgrid(steps, steps, indexing="ij")
    bins = np.stack([u.ravel(), v.ravel()], 1)
    return bins[(bins != 0).any(1)]


def peak_ratio(spectrum: np.ndarray, period: int) -> float:
    """Mean over the period's bins of power / mean power of the four neighbouring bins."""
    size = spectrum.shape[0]
    bins = grid_frequencies(size, period)
    u, v = bins[:, 0], bins[:, 1]
    around = sum(spectrum[(u + du) % size, (v + dv) % size] for du, dv in ((1, 0), (-1, 0), (0, 1), (0, -1))) / 4
    return float((spectrum[u, v] / np.maximum(around, 1e-12)).mean())


def grid_periods(image_size: int, smallest_map: int) -> tuple[int, ...]:
    """Periods a generator leaves when it upsamples ×2 from a smallest_map side to image_size:
    2, 4, …, image_size / smallest_map (the same strides as the pooled grids of the classifier's levels);
    at most half the image (a 1×1 map repeats nothing)."""
    periods, p = [], 2
    while p <= image_size // max(smallest_map, 2):
        periods.append(p)
        p *= 2
    return tuple(periods)


def grid_artifact(generated: np.ndarray, real: np.ndarray, periods: tuple[int, ...]) -> dict:
    """{'grid_artifact': worst period's ratio, 'by_period': {p: generated peak ratio / real peak ratio}}."""
    gen, ref = image_power_spectrum(generated), image_power_spectrum(real)
    by_period = {str(p): round(peak_ratio(gen, p) / peak_ratio(ref, p), 4) for p in periods}
    return {"grid_artifact": max(by_period.values()), "by_period": by_period}
