"""GenICam pixel formats (PFNC names) to the two layouts the pipeline uses: 8-bit gray or 8-bit BGR.

`convert` always returns a new, C-contiguous uint8 array that owns its memory, so the caller may
re-queue the driver buffer it came from as soon as `convert` returns.

- Mono8/Mono10/Mono12/Mono16: unpacked, one pixel per 8-bit (Mono8) or 16-bit little-endian
  container. Deeper formats are scaled to 8 bits by their bit depth: round(v * 255 / (2^bits - 1)),
  so full scale maps to 255 (Mono12 4095 -> 255, 2048 -> 128); values above the format's maximum
  (garbage in the unused high bits) saturate at 255.
- BayerRG8/BG8/GR8/GB8: the PFNC name gives the colours of the first two pixels of the first row
  (BayerRG8 = R G / G B). OpenCV names its Bayer codes after the second row, hence the crossed
  table below (checked by tests against known colour patches).
- RGB8, BGR8: packed 3 bytes per pixel; RGBa8, BGRa8: 4 bytes per pixel, alpha dropped.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from runtime.errors import CameraError

Output = Literal["gray", "bgr"]

MONO_BITS: dict[str, int] = {"Mono8": 8, "Mono10": 10, "Mono12": 12, "Mono16": 16}

# PFNC Bayer name -> (OpenCV code to BGR, OpenCV code to gray). See the module docstring.
_BAYER: dict[str, tuple[int, int]] = {
    "BayerRG8": (cv2.COLOR_BayerBG2BGR, cv2.COLOR_BayerBG2GRAY),
    "BayerBG8": (cv2.COLOR_BayerRG2BGR, cv2.COLOR_BayerRG2GRAY),
    "BayerGR8": (cv2.COLOR_BayerGB2BGR, cv2.COLOR_BayerGB2GRAY),
    "BayerGB8": (cv2.COLOR_BayerGR2BGR, cv2.COLOR_BayerGR2GRAY),
}

# Packed colour formats: bytes per pixel and whether the first byte is red.
_COLOUR: dict[str, tuple[int, bool]] = {
    "RGB8": (3, True),
    "BGR8": (3, False),
    "RGBa8": (4, True),
    "BGRa8": (4, False),
}

SUPPORTED_FORMATS: tuple[str, ...] = (*MONO_BITS, *_BAYER, *_COLOUR)


def _samples(data: np.ndarray, count: int, sample_dtype: type[np.unsignedinteger], what: str) -> np.ndarray:
    """`data` as a flat array of `count` samples of `sample_dtype`, or CameraError naming the sizes.

    Accepts samples of the right dtype or raw bytes (uint8) holding little-endian containers.
    `what` names the image in messages ("Mono12 640x480").
    """
    flat = np.ascontiguousarray(data).reshape(-1)
    want = np.dtype(sample_dtype)
    if flat.dtype != want and flat.dtype.itemsize != 1:
        raise CameraError(
            f"{what} buffer has dtype {flat.dtype}; expected {want.name} samples or raw uint8 bytes"
        )
    if flat.nbytes != count * want.itemsize:
        raise CameraError(
            f"{what} buffer has the wrong size: expected {count * want.itemsize} bytes "
            f"({count} x {want.name}), got {flat.nbytes} bytes"
        )
    if flat.dtype == want:
        return flat
    return flat.view(want.newbyteorder("<")).astype(want, copy=False)


def _check_shape(width: int, height: int, fmt: str) -> None:
    if width <= 0 or height <= 0:
        raise CameraError(f"{fmt} image has an invalid size {width}x{height}; width and height must be > 0")


def convert(
    data: np.ndarray, width: int, height: int, pixel_format: str, output: Output = "gray"
) -> np.ndarray:
    """Convert one image buffer to HxW uint8 gray or HxWx3 uint8 BGR (always a new array).

    Raises CameraError for an unknown format (naming the supported ones) or a buffer whose size
    does not match `width` x `height` in that format (expected vs got).
    """
    if output not in ("gray", "bgr"):
        raise CameraError(f"unknown output layout {output!r}; use 'gray' or 'bgr'")
    _check_shape(width, height, pixel_format)
    pixels = width * height
    what = f"{pixel_format} {width}x{height}"

    if pixel_format in MONO_BITS:
        bits = MONO_BITS[pixel_format]
        if bits == 8:
            gray = _samples(data, pixels, np.uint8, what).reshape(height, width).copy()
        else:
            wide = _samples(data, pixels, np.uint16, what).reshape(height, width)
            gray = cv2.convertScaleAbs(wide, alpha=255.0 / ((1 << bits) - 1))  # rounds and saturates
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR) if output == "bgr" else gray

    if pixel_format in _BAYER:
        to_bgr, to_gray = _BAYER[pixel_format]
        if width < 2 or height < 2:
            raise CameraError(
                f"{pixel_format} image {width}x{height} is too small to demosaic (needs >= 2x2)"
            )
        mosaic = _samples(data, pixels, np.uint8, what).reshape(height, width)
        return np.ascontiguousarray(cv2.cvtColor(mosaic, to_bgr if output == "bgr" else to_gray))

    if pixel_format in _COLOUR:
        channels, red_first = _COLOUR[pixel_format]
        packed = _samples(data, pixels * channels, np.uint8, what).reshape(height, width, channels)
        if output == "gray":
            code = cv2.COLOR_RGB2GRAY if red_first else cv2.COLOR_BGR2GRAY
            if channels == 4:
                code = cv2.COLOR_RGBA2GRAY if red_first else cv2.COLOR_BGRA2GRAY
            return np.ascontiguousarray(cv2.cvtColor(packed, code))
        if channels == 3:
            if red_first:
                return np.ascontiguousarray(cv2.cvtColor(packed, cv2.COLOR_RGB2BGR))
            return packed.copy()
        code = cv2.COLOR_RGBA2BGR if red_first else cv2.COLOR_BGRA2BGR
        return np.ascontiguousarray(cv2.cvtColor(packed, code))

    raise CameraError(
        f"unsupported pixel format {pixel_format!r}; supported: {', '.join(SUPPORTED_FORMATS)} "
        "(set the camera's PixelFormat node to one of them in [source.genicam.nodes])"
    )


def to_gray(data: np.ndarray, width: int, height: int, pixel_format: str) -> np.ndarray:
    """HxW uint8 gray from one buffer in `pixel_format` (see `convert`)."""
    return convert(data, width, height, pixel_format, "gray")


def to_bgr(data: np.ndarray, width: int, height: int, pixel_format: str) -> np.ndarray:
    """HxWx3 uint8 BGR from one buffer in `pixel_format` (see `convert`)."""
    return convert(data, width, height, pixel_format, "bgr")
