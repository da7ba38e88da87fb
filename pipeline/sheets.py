"""Contact sheets: clips drawn row by row, frame by frame, each row labelled (Pillow only).

Used by ``python -m pipeline.inspect --contact-sheet`` (clips of each class) and by the MLflow
review of an evaluation (:mod:`training.tracking.review`: test clips, true and predicted labels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pipeline.records import DatasetSpec

LABEL_WIDTH = 160  # pixels left of the frames for a row's title and subtitle
GAP = 2  # pixels between cells


def sheet_size(rows: int, sequence_length: int, height: int, width: int, scale: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a contact sheet of ``rows`` clips."""
    return (
        LABEL_WIDTH + sequence_length * (width * scale + GAP),
        GAP + rows * (height * scale + GAP),
    )


def labelled_sheet(
    rows: Sequence[tuple[str, str, Sequence[np.ndarray]]], spec: DatasetSpec, scale: int = 2
) -> Image.Image:
    """A grid of clips, one row each, frame by frame, in the given order.

    Args:
        rows: ``(title, subtitle, frames)`` per clip: the title in white, the subtitle in grey
            (26 characters of it fit), the ``(H, W, C)`` uint8 frames.
    """
    t, h, w = spec.sequence_length, spec.height, spec.width
    sheet = Image.new("RGB", sheet_size(len(rows), t, h, w, scale), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for row, (name, video, frames) in enumerate(rows):
        top = GAP + row * (h * scale + GAP)
        draw.text((4, top + 2), name, fill=(255, 255, 255))
        draw.text((4, top + 14), video[:26], fill=(160, 160, 160))
        for column, frame in enumerate(frames[:t]):
            image = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
            sheet.paste(image, (LABEL_WIDTH + column * (w * scale + GAP), top))
    return sheet
