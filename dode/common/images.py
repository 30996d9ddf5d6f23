"""Image value ranges, channels and PNG folders: the one place where images change representation.

Three representations, each used at one kind of place:

- model space: float in [-1, 1], (B, C, H, W), what a denoiser returns at sigma = 0;
- stored images: uint8 in [0, 255], (B, C, H, W) with C = 1 or 3, what samples artifacts and PNGs hold;
- unit images: float in [0, 1], what pytorch-fid's ``InceptionV3`` reads (float32, ``ToTensor`` of a PNG).

The conversions are exactly one each: ``to_uint8(x) = clip(round((x + 1) * 127.5), 0, 255)`` (round half to
even, as numpy and torch round), ``to_unit(u) = u / 255`` (float32 by default, as torchvision's ``ToTensor``),
``to_model(u) = u / 127.5 - 1`` (float64), and grayscale becomes RGB by repeating the channel, which is
what PIL's ``convert("RGB")`` does to an ``L`` image inside pytorch-fid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

# The file types pytorch-fid reads from a folder (pytorch_fid.fid_score.IMAGE_EXTENSIONS).
IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")


def check_uint8(images: np.ndarray) -> np.ndarray:
    """``images`` as a uint8 (B, C, H, W) array with C in (1, 3), or one ValueError saying what was given."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected uint8 images of shape (B, 1 or 3, H, W), got {images.dtype} {images.shape}; "
            "convert model-space samples with dode.common.images.to_uint8"
        )
    return images


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Model space [-1, 1] -> uint8: clip(round((x + 1) * 127.5), 0, 255), computed in float64."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def to_model(images: np.ndarray) -> torch.Tensor:
    """uint8 -> model space float64 in [-1, 1]: u / 127.5 - 1 (the inverse of ``to_uint8`` on its grid)."""
    return torch.from_numpy(check_uint8(images).astype(np.float64)) / 127.5 - 1


def to_unit(images: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 -> [0, 1]: u / 255 in ``dtype``; in float32 bit-identical to torchvision's ``ToTensor``."""
    return torch.from_numpy(check_uint8(images).copy()).to(dtype).div(255)


def to_rgb(images: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """(B, 1, H, W) -> (B, 3, H, W) by repeating the channel; RGB passes through unchanged."""
    if images.shape[1] == 3:
        return images
    if images.shape[1] != 1:
        raise ValueError(f"expected 1 or 3 channels, got shape {tuple(images.shape)}")
    return images.repeat(3, axis=1) if isinstance(images, np.ndarray) else images.repeat(1, 3, 1, 1)


def to_gray(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) uint8 whose channels are equal (a grayscale image saved as RGB) -> (B, 1, H, W)."""
    images = check_uint8(images)
    if images.shape[1] == 1:
        return images
    if not (np.array_equal(images[:, 0], images[:, 1]) and np.array_equal(images[:, 0], images[:, 2])):
        raise ValueError("these images have colour; this feature extractor reads grayscale (1-channel) images")
    return images[:, :1]


def image_files(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` as pytorch-fid lists them (its extensions, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder at {folder}")
    files = sorted(f for ext in IMAGE_EXTENSIONS for f in folder.glob(f"*.{ext}"))
    if not files:
        raise ValueError(f"{folder} holds no images with an extension in {list(IMAGE_EXTENSIONS)}")
    return files


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 (C, H, W): ``L`` stays one channel, every other mode becomes RGB (as pytorch-fid)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img if img.mode == "L" else img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path} is not a readable image ({err}); remove or replace it") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def iter_folder(folder: str | Path, batch_size: int) -> Iterator[np.ndarray]:
    """The folder's images in batches of uint8 (B, C, H, W), reading at most ``batch_size`` files at a time."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    files = image_files(folder)
    for start in range(0, len(files), batch_size):
        arrays = [read_image(f) for f in files[start : start + batch_size]]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"{folder}: images differ in size or channels {sorted(shapes)}; resize them to one size")
        yield np.stack(arrays)


def write_png(images: np.ndarray, folder: str | Path, names: Sequence[str]) -> list[Path]:
    """Write uint8 (B, C, H, W) images as PNGs (``L`` for one channel, ``RGB`` for three) named ``names``; a
    symbolic link in the way is refused (an OSError), never written through."""
    from PIL import Image

    images = check_uint8(images)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, name in zip(images, names, strict=True):
        path = folder / name
        pixels = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:  # 2-D uint8 -> L, (H, W, 3) -> RGB
            Image.fromarray(np.ascontiguousarray(pixels)).save(f, format="PNG")
        paths.append(path)
    return paths
