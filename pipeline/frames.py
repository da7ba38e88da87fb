"""Frame images: decoded video frames to upright, resized RGB arrays, and JPEG/PNG coding.

:class:`FrameConverter` does the colour conversion and the scaling of a PyAV frame in one
swscale pass (C, one reusable context), then only cheap ndarray views: a quarter-turn
rotation for the stream's display matrix and a centre crop (``resize=crop``) or a paste into
black (``resize=letterbox``). :func:`encode_image` / :func:`decode_image` are the one place
where clip frames become bytes and back, so training and predict see the same pixels.
"""

from __future__ import annotations

import dataclasses
import io
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

RESIZE_MODES = ("crop", "letterbox")


def quarter_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns (0-3) nearest to ``rotation`` degrees."""
    return round(rotation / 90) % 4


def display_size(width: int, height: int, rotation: float, aspect: Fraction = Fraction(1)) -> tuple[int, int]:
    """``(width, height)`` as shown: stored size, stretched by the pixel aspect, rotated."""
    width = max(1, round(width * aspect))
    return (height, width) if quarter_turns(rotation) % 2 else (width, height)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a stored frame becomes an upright ``height``×``width`` image.

    swscale scales to ``scale_width``×``scale_height`` (stored orientation); ``np.rot90`` by
    ``turns`` makes that upright, ``content_width``×``content_height``; then a centre crop
    (offsets ``top``/``left`` into the content) or a letterbox (the content pasted at
    ``top``/``left`` into black) gives ``width``×``height``.
    """

    scale_width: int
    scale_height: int
    turns: int
    content_width: int
    content_height: int
    top: int
    left: int
    width: int
    height: int
    letterbox: bool

    @classmethod
    def plan(
        cls,
        width: int,
        height: int,
        rotation: float,
        target: tuple[int, int],
        mode: str,
        aspect: Fraction = Fraction(1),
    ) -> Geometry:
        """Plans the geometry for stored ``width``×``height`` and ``target`` = ``(height, width)``.

        Raises:
            ValueError: for a resize mode other than ``crop`` or ``letterbox``.
        """
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
        out_h, out_w = target
        turns = quarter_turns(rotation)
        shown_w, shown_h = display_size(width, height, rotation, aspect)
        if mode == "crop":  # cover the target, then cut the overhang evenly
            scale = max(out_w / shown_w, out_h / shown_h)
            w, h = max(out_w, round(shown_w * scale)), max(out_h, round(shown_h * scale))
            top, left = (h - out_h) // 2, (w - out_w) // 2
        else:  # fit inside the target, then centre on black
            scale = min(out_w / shown_w, out_h / shown_h)
            w, h = min(out_w, max(1, round(shown_w * scale))), min(out_h, max(1, round(shown_h * scale)))
            top, left = (out_h - h) // 2, (out_w - w) // 2
        scale_w, scale_h = (h, w) if turns % 2 else (w, h)
        return cls(scale_w, scale_h, turns, w, h, top, left, out_w, out_h, mode == "letterbox")

    def apply(self, scaled: np.ndarray) -> np.ndarray:
        """Rotates and crops/pads the scaled RGB array into a C-contiguous (height, width, 3) array."""
        if self.turns:
            scaled = np.rot90(scaled, self.turns)
        if self.letterbox:
            out = np.zeros((self.height, self.width, 3), dtype=np.uint8)
            out[self.top : self.top + self.content_height, self.left : self.left + self.content_width] = scaled
            return out
        cropped = scaled[self.top : self.top + self.height, self.left : self.left + self.width]
        return np.ascontiguousarray(cropped)


class FrameConverter:
    """Turns decoded PyAV frames into upright ``height``×``width`` RGB arrays.

    Args:
        height: target height H.
        width: target width W.
        resize: ``crop`` or ``letterbox``.
        aspect: the stream's sample (pixel) aspect ratio; 1 for square pixels.
    """

    def __init__(self, height: int, width: int, resize: str, aspect: Fraction = Fraction(1)):
        self._target = (height, width)
        self._resize = resize
        self._aspect = aspect
        self._reformatter = VideoReformatter()  # keeps its swscale context from frame to frame
        self._key: tuple[int, int, int] | None = None
        self._geometry: Geometry | None = None

    def geometry(self, frame: av.VideoFrame) -> Geometry:
        """The frame's geometry, planned again only when its size or rotation changes."""
        key = (frame.width, frame.height, frame.rotation)
        if key != self._key or self._geometry is None:
            self._geometry = Geometry.plan(*key, self._target, self._resize, self._aspect)
            self._key = key
        return self._geometry

    def convert(self, frame: av.VideoFrame) -> np.ndarray:
        """One decoded frame -> (H, W, 3) uint8 RGB array, upright."""
        geometry = self.geometry(frame)
        scaled = self._reformatter.reformat(
            frame,
            width=geometry.scale_width,
            height=geometry.scale_height,
            format="rgb24",
            src_color_range=frame.color_range,  # full-range (JPEG) video stays full range
            threads=1,  # small outputs: slicing threads cost more than they save; the decoder has threads
        )
        return geometry.apply(scaled.to_ndarray())


def encode_image(array: np.ndarray, encoding: str = "jpeg", quality: int = 90) -> bytes:
    """Encodes an (H, W, 3) uint8 RGB array as JPEG (at ``quality``) or PNG.

    Raises:
        ValueError: for an encoding other than ``jpeg`` or ``png``.
    """
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if encoding == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    elif encoding == "png":
        image.save(buffer, format="PNG")
    else:
        raise ValueError(f"frame encoding must be jpeg or png, got {encoding!r}")
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Decodes one encoded frame (JPEG or PNG) into an (H, W, 3) uint8 RGB array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)  # writable, unlike np.asarray's view
