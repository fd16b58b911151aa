"""Deterministic PNG images standing in for the model's output.

The same (prompt, seed, index, size) always gives the same bytes; a different seed changes the
colours and shapes, a different index changes the shapes and the number drawn on the image, so
a contact sheet of a sweep shows at a glance which image is which.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from functools import lru_cache

from PIL import Image, ImageChops, ImageDraw, ImageFont

__all__ = ["SMALL_LONG_SIDE", "image_dimensions", "render_png"]

#: Long side in pixels of a "small" image (the default: tests and benchmarks stay light).
SMALL_LONG_SIDE = 256
_DEFAULT_SIZE = (2560, 1440)
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[:x]\s*(\d+)")


def image_dimensions(image_size: str | None, *, full_size: bool = False) -> tuple[int, int]:
    """Width and height for an ``image_size`` value such as ``"2560:1440 (16:9)"``.

    Full size is the size the value names; small keeps its aspect ratio with a long side of
    :data:`SMALL_LONG_SIDE` pixels.
    """
    match = _SIZE_RE.match(image_size or "")
    width, height = (int(match.group(1)), int(match.group(2))) if match else _DEFAULT_SIZE
    if full_size:
        return width, height
    scale = SMALL_LONG_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _digest(*parts: object) -> bytes:
    text = "\x1f".join(repr(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).digest()


def _colour(data: bytes, offset: int) -> tuple[int, int, int]:
    return data[offset], data[offset + 1], data[offset + 2]


@lru_cache(maxsize=256)
def render_png(prompt: str, seed: int, index: int, width: int, height: int) -> bytes:
    """The PNG bytes of image ``index`` (0-based) of a job with this prompt and seed."""
    job_hash = _digest(prompt, seed)
    image_hash = _digest(prompt, seed, index)
    # Drawing is done at a small scale and enlarged: full-size images stay cheap to make.
    scale = max(1, max(width, height) // SMALL_LONG_SIDE)
    small_w, small_h = max(1, width // scale), max(1, height // scale)
    image = _gradient(small_w, small_h, _colour(job_hash, 0), _colour(job_hash, 3))
    draw = ImageDraw.Draw(image)
    _draw_shapes(draw, small_w, small_h, image_hash)
    _draw_label(draw, small_w, small_h, index, _colour(image_hash, 29))
    if scale > 1:
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return _encode_png(image)


def _encode_png(image: Image.Image) -> bytes:
    """A valid RGB PNG, written directly: no row filters, zlib level 1.

    Pillow's PNG encoder tries a filter per row, which costs about five times the drawing; the
    emulator serves thousands of images in a benchmark, and its CPU is not the runner's to pay.
    """
    width, height = image.size
    raw = image.tobytes()
    stride = width * 3
    # each row is prefixed with its filter type, 0 (none)
    rows = b"".join(b"\x00" + raw[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", header),
        _chunk(b"IDAT", zlib.compress(rows, 1)),
        _chunk(b"IEND", b""),
    ))  # fmt: skip


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _gradient(
    width: int, height: int, start: tuple[int, int, int], end: tuple[int, int, int]
) -> Image.Image:
    """A diagonal gradient from ``start`` (top left) to ``end`` (bottom right)."""
    return Image.composite(Image.new("RGB", (width, height), end),
                           Image.new("RGB", (width, height), start),
                           _gradient_mask(width, height))  # fmt: skip


@lru_cache(maxsize=16)
def _gradient_mask(width: int, height: int) -> Image.Image:
    """The diagonal 0-255 ramp of a gradient; the same for every image of a size."""
    vertical = Image.linear_gradient("L")
    horizontal = vertical.transpose(Image.Transpose.ROTATE_90)
    return ImageChops.add(vertical, horizontal, scale=2.0).resize((width, height))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _draw_shapes(draw: ImageDraw.ImageDraw, width: int, height: int, data: bytes) -> None:
    """Four circles and rectangles placed and coloured by ``data``."""
    for shape in range(4):
        b = data[shape * 6 : shape * 6 + 6]
        cx, cy = b[0] * width // 255, b[1] * height // 255
        radius = max(4, (b[2] % 40 + 10) * min(width, height) // 100)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = (b[3], b[4], b[5])
        if b[2] % 2:
            draw.ellipse(box, fill=fill, outline=(0, 0, 0))
        else:
            draw.rectangle(box, fill=fill, outline=(0, 0, 0))


def _draw_label(
    draw: ImageDraw.ImageDraw, width: int, height: int, index: int, colour: tuple[int, int, int]
) -> None:
    """The image's number (1-based, as a person counts) large in the middle."""
    size = max(10, min(width, height) // 3)
    font = _font(size)
    text = str(index + 1)
    draw.text((width / 2, height / 2), text, fill=(255, 255, 255), font=font, anchor="mm",
              stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))  # fmt: skip
    draw.rectangle((0, 0, width - 1, height - 1), outline=colour, width=max(2, size // 10))
