"""The demo dataset: real video files whose six classes differ only in motion.

``python -m pipeline.synth --output data/raw`` writes UCF101-style class folders
``DIR/<Class>/v_<Class>_g<NN>_c<MM>.<ext>``. Every video shows one object (disc, square,
triangle, ring, diamond or cross) on a textured background (noise, stripes or checker);
the object moves left, right, up or down, or zooms in or out. Shape, colours, size, start
position, speed and background are random and drawn the same way for every class, so no
single frame tells the class: only the motion between frames does.

Geometry is stated in *crop units*: the centred square of side ``min(width, height)`` that
the preprocessing crops to is ``[0, 1] x [0, 1]``. The object stays inside that square for
the whole video and moves at least 0.135 crop units per second (6 px in the model's 7/8 s
clip at 48x48), or zooms by at least 1.29x per second, so any one-second clip shows the motion.

Videos of one group number (``gNN``) share a scene (background texture and the object's
shape and colour) across all classes, as a UCF101 group shares an actor and a place: the
preprocessing splits by group, so nothing leaks, and a scene never hints at a class.
Containers (mp4/H.264, avi/MJPEG, webm/VP9), frame rates (15-30 fps, 29.97 included),
resolutions (64x48 to 160x120, portrait, square and odd sizes, which the writer pads by one
pixel) and lengths (1-6 s, more short than long) vary.
The same seed gives the same frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from vidseq import cli
from vidseq.params import DataConfig

LOGGER = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("MoveDown", "MoveLeft", "MoveRight", "MoveUp", "ZoomIn", "ZoomOut")
DIRECTIONS: dict[str, tuple[int, int]] = {  # (dx, dy) in image axes: x right, y down
    "MoveDown": (0, 1),
    "MoveLeft": (-1, 0),
    "MoveRight": (1, 0),
    "MoveUp": (0, -1),
}
SHAPES = ("disc", "square", "triangle", "ring", "diamond", "cross")
TEXTURES = ("noise", "stripes", "checker")
EXTS = ("mp4", "avi", "webm")
FRAME_RATES = (15.0, 20.0, 24.0, 25.0, 30000 / 1001, 30.0)
FRAME_SIZES = (  # (width, height)
    (64, 48), (80, 60), (96, 72), (128, 96), (160, 120),  # 4:3
    (112, 64), (144, 80),  # wide
    (48, 64), (72, 96), (90, 120),  # portrait
    (100, 100), (87, 65), (75, 99),  # square and odd sizes
)
SECONDS = (1.0, 6.0)
MAX_GROUPS = 25  # as UCF101

SIZE_RANGE = (0.15, 0.7)  # object diameter, crop units
SPEED_RANGE = (0.2, 0.5)  # translation, crop units per second (long videos: slower)
ZOOM_RANGE = (1.35, 1.9)  # size factor per second
MARGIN = 0.02  # gap between the object and the crop square's border, crop units

DEFAULT_VIDEOS_PER_CLASS = DataConfig().synth_videos_per_class
DEFAULT_SEED = DataConfig().synth_seed

Colour = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Scene:
    """What the videos of one group share: the background and the object's look.

    Attributes:
        texture: ``noise``, ``stripes`` or ``checker``.
        colours: the background's two colours, RGB.
        scale: the texture's period (stripes, checker) or cell size (noise), crop units.
        angle: the texture's orientation, radians.
        noise_seed: seed of the noise texture's random grid.
        shape: the object's shape, one of :data:`SHAPES`.
        colour: the object's colour, RGB; it contrasts with both background colours.
    """

    texture: str
    colours: tuple[Colour, Colour]
    scale: float
    angle: float
    noise_seed: int
    shape: str
    colour: Colour


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """Everything that determines one video; :func:`render_video` draws it.

    Positions and sizes are in crop units (the centred ``min(width, height)`` square is
    ``[0, 1]²``, x right, y down); at time ``t`` seconds the object's centre is
    ``centre + velocity * t`` and its diameter ``size * growth ** t``.
    """

    class_name: str
    group: int
    clip: int
    ext: str
    fps: float
    width: int
    height: int
    num_frames: int
    scene: Scene
    centre: tuple[float, float]
    velocity: tuple[float, float]
    size: float
    growth: float
    rotation: float

    @property
    def filename(self) -> str:
        """UCF101-style name: ``v_<Class>_g<NN>_c<MM>.<ext>``."""
        return f"v_{self.class_name}_g{self.group:02d}_c{self.clip:02d}.{self.ext}"

    @property
    def relpath(self) -> str:
        """Path relative to the dataset root: ``<Class>/<filename>``."""
        return f"{self.class_name}/{self.filename}"

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


# --------------------------------------------------------------------------- planning


def group_sizes(videos_per_class: int) -> list[int]:
    """Videos per group: ``min(25, n // 2)`` groups of two or three, as even as possible."""
    groups = max(1, min(MAX_GROUPS, videos_per_class // 2))
    base, extra = divmod(videos_per_class, groups)
    return [base + (1 if g < extra else 0) for g in range(groups)]


def plan_dataset(
    videos_per_class: int = DEFAULT_VIDEOS_PER_CLASS,
    seed: int = DEFAULT_SEED,
    *,
    exts: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    seconds: float | None = None,
    fps: float | None = None,
) -> list[VideoSpec]:
    """Draws the specs of the whole dataset; the same arguments give the same specs.

    Args:
        videos_per_class: videos of each class.
        seed: random seed.
        exts: containers to draw from (default :data:`EXTS`).
        size: ``(width, height)`` of every video instead of drawn sizes.
        seconds: length of every video instead of drawn lengths.
        fps: frame rate of every video instead of drawn rates.

    Returns:
        Specs ordered by class, group and clip.

    Raises:
        ValueError: for a non-positive count, size, length or rate, a negative seed or an unknown ext.
    """
    if videos_per_class < 1:
        raise ValueError(f"videos_per_class must be positive, got {videos_per_class}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if size is not None and min(size) < 8:
        raise ValueError(f"size must be at least 8x8, got {size}")
    if seconds is not None and seconds <= 0 or fps is not None and fps <= 0:
        raise ValueError(f"seconds and fps must be positive, got {seconds} and {fps}")
    from pipeline.writer import FORMATS

    unknown = sorted(set(exts or ()) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown video extension(s) {unknown}: use {sorted(FORMATS)}")
    sizes = group_sizes(videos_per_class)
    shapes = _balanced(np.random.default_rng([seed, 0, 1]), SHAPES, len(sizes))
    textures = _balanced(np.random.default_rng([seed, 0, 2]), TEXTURES, len(sizes))
    scenes = [
        draw_scene(np.random.default_rng([seed, group]), shape, texture)
        for group, shape, texture in zip(range(1, len(sizes) + 1), shapes, textures)
    ]
    specs = []
    for label, class_name in enumerate(CLASSES):
        for group, (scene, count) in enumerate(zip(scenes, sizes), start=1):
            for clip in range(1, count + 1):
                rng = np.random.default_rng([seed, group, clip, label + 1])
                specs.append(
                    draw_video(rng, class_name, group, clip, scene, exts=exts, size=size, seconds=seconds, fps=fps)
                )
    return specs


def _balanced(rng: np.random.Generator, choices: Sequence[str], count: int) -> list[str]:
    """``count`` items cycling through shuffles of ``choices``, so each is used about equally."""
    rounds = -(-count // len(choices))
    return [str(choices[i]) for _ in range(rounds) for i in rng.permutation(len(choices))][:count]


def draw_scene(rng: np.random.Generator, shape: str, texture: str) -> Scene:
    """Draws a group's colours and texture geometry; the object contrasts with both colours."""
    dark_background = bool(rng.random() < 0.5)
    band, object_band = ((20, 110), (170, 255)) if dark_background else ((140, 235), (0, 80))
    scale = float(rng.uniform(0.08, 0.2) if texture == "noise" else rng.uniform(0.15, 0.4))
    return Scene(
        texture=texture,
        colours=(_colour(rng, *band), _colour(rng, *band)),
        scale=scale,
        angle=float(rng.uniform(0, math.pi)),
        noise_seed=int(rng.integers(2**31)),
        shape=shape,
        colour=_colour(rng, *object_band),
    )


def _colour(rng: np.random.Generator, low: float, high: float) -> Colour:
    """A random RGB colour whose luminance (BT.601) lies in ``[low, high]``."""
    while True:
        rgb = rng.integers(0, 256, 3)
        if low <= 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] <= high:
            return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def draw_video(
    rng: np.random.Generator,
    class_name: str,
    group: int,
    clip: int,
    scene: Scene,
    *,
    exts: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    seconds: float | None = None,
    fps: float | None = None,
) -> VideoSpec:
    """Draws one video: format, length and a motion of ``class_name`` that stays in the crop."""
    ext = str(rng.choice(list(exts or EXTS)))
    rate = float(fps or FRAME_RATES[rng.integers(len(FRAME_RATES))])
    width, height = size or FRAME_SIZES[rng.integers(len(FRAME_SIZES))]
    length = seconds or _log_uniform(rng, *SECONDS)  # more short videos than long ones
    num_frames = max(2, round(length * rate))
    span = (num_frames - 1) / rate  # seconds from the first frame to the last
    if class_name in DIRECTIONS:
        centre, velocity, diameter, growth = _translation(rng, DIRECTIONS[class_name], span)
    elif class_name in ("ZoomIn", "ZoomOut"):
        centre, velocity, diameter, growth = _zoom(rng, class_name == "ZoomIn", span)
    else:
        raise ValueError(f"unknown class {class_name!r}: use one of {CLASSES}")
    return VideoSpec(
        class_name=class_name,
        group=group,
        clip=clip,
        ext=ext,
        fps=rate,
        width=int(width),
        height=int(height),
        num_frames=num_frames,
        scene=scene,
        centre=centre,
        velocity=velocity,
        size=diameter,
        growth=growth,
        rotation=float(rng.uniform(0, 2 * math.pi)),
    )


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A log-uniform draw in ``[low, high]``; ``low`` when ``high <= low`` (rounding)."""
    return float(math.exp(rng.uniform(math.log(low), math.log(max(low, high)))))


def _translation(
    rng: np.random.Generator, direction: tuple[int, int], span: float
) -> tuple[tuple[float, float], tuple[float, float], float, float]:
    """Start, velocity, size and growth of a straight move that stays inside the crop.

    Size and speed share the room: ``size + speed * span <= 1 - 2 * MARGIN``. Long videos
    get small, slow objects, but never slower than needed to cross the crop in ``span``.
    The start is drawn so that the object's position in a random frame has the same
    distribution along and across the motion, and for either direction.
    """
    room = 1 - 2 * MARGIN
    floor = min(SPEED_RANGE[0], (room - SIZE_RANGE[0]) / span)
    diameter = _log_uniform(rng, SIZE_RANGE[0], min(SIZE_RANGE[1], room - floor * span))
    speed = float(rng.uniform(floor, max(floor, min(SPEED_RANGE[1], (room - diameter) / span))))
    travel = speed * span
    low = MARGIN + diameter / 2
    free = max(0.0, 1 - 2 * low - travel)
    along = low + rng.uniform(0, free)
    across = low + rng.uniform(0, free) + rng.uniform(0, travel)
    dx, dy = direction
    start_along = along if dx + dy > 0 else 1 - along
    centre = (start_along, across) if dx else (across, start_along)
    return (float(centre[0]), float(centre[1])), (dx * speed, dy * speed), diameter, 1.0


def _zoom(
    rng: np.random.Generator, zoom_in: bool, span: float
) -> tuple[tuple[float, float], tuple[float, float], float, float]:
    """Centre, velocity (zero), start size and growth of a zoom that stays inside the crop."""
    rate = float(rng.uniform(*ZOOM_RANGE))
    max_ratio = SIZE_RANGE[1] / SIZE_RANGE[0]
    if rate**span > max_ratio:
        rate = max_ratio ** (1 / span)
    ratio = rate**span
    small = _log_uniform(rng, SIZE_RANGE[0], SIZE_RANGE[1] / ratio)
    large = small * ratio
    low = MARGIN + large / 2
    cx, cy = (low + (1 - 2 * low) * (rng.uniform() + rng.uniform()) / 2 for _ in range(2))
    return (float(cx), float(cy)), (0.0, 0.0), (small if zoom_in else large), (rate if zoom_in else 1 / rate)


# --------------------------------------------------------------------------- rendering


def object_track(spec: VideoSpec) -> tuple[np.ndarray, np.ndarray]:
    """The object's centre ``(T, 2)`` and diameter ``(T,)`` in every frame, crop units."""
    t = np.arange(spec.num_frames, dtype=np.float64) / spec.fps
    centres = np.asarray(spec.centre) + np.outer(t, spec.velocity)
    return centres, spec.size * spec.growth**t


def crop_box(width: int, height: int) -> tuple[float, float, int]:
    """``(left, top, side)`` in pixels of the centred square that crop units refer to."""
    side = min(width, height)
    return (width - side) / 2, (height - side) / 2, side


def render_background(scene: Scene, width: int, height: int) -> np.ndarray:
    """The scene's static background, ``(H, W, 3)`` float32 RGB in 0..255.

    The texture is defined in crop units, so videos of one group show the same pattern
    whatever their resolution.
    """
    left, top, side = crop_box(width, height)
    x = ((np.arange(width, dtype=np.float32) + 0.5 - left) / side)[None, :]
    y = ((np.arange(height, dtype=np.float32) + 0.5 - top) / side)[:, None]
    cos, sin = math.cos(scene.angle), math.sin(scene.angle)
    u, v = x * cos + y * sin, -x * sin + y * cos
    if scene.texture == "stripes":
        mix = np.clip(0.5 + 2.0 * np.sin(2 * np.pi * u / scene.scale), 0.0, 1.0)
    elif scene.texture == "checker":
        mix = ((np.floor(u / scene.scale) + np.floor(v / scene.scale)) % 2).astype(np.float32)
    elif scene.texture == "noise":
        mix = _value_noise(scene.noise_seed, x, y, scene.scale)
    else:
        raise ValueError(f"unknown texture {scene.texture!r}: use one of {TEXTURES}")
    low, high = (np.asarray(c, dtype=np.float32) for c in scene.colours)
    return low + mix[..., None] * (high - low)


def _value_noise(seed: int, x: np.ndarray, y: np.ndarray, cell: float) -> np.ndarray:
    """Bilinearly interpolated random values on a grid of ``cell`` crop units over [-1, 2]²."""
    n = int(math.ceil(3 / cell)) + 2
    grid = np.random.default_rng(seed).random((n, n), dtype=np.float32)
    gx, gy = np.broadcast_arrays((x + 1) / cell, (y + 1) / cell)
    ix, iy = np.clip(np.floor(gx).astype(int), 0, n - 2), np.clip(np.floor(gy).astype(int), 0, n - 2)
    fx, fy = np.clip(gx - ix, 0, 1), np.clip(gy - iy, 0, 1)
    top = grid[iy, ix] * (1 - fx) + grid[iy, ix + 1] * fx
    bottom = grid[iy + 1, ix] * (1 - fx) + grid[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _signed_distance(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Distance (pixels, negative inside) to a shape of circumradius ``r`` centred at 0."""
    if shape == "disc":
        return np.hypot(u, v) - r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - r * math.sqrt(0.5)
    if shape == "diamond":
        return (np.abs(u) + np.abs(v)) * math.sqrt(0.5) - r * math.sqrt(0.5)
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.72 * r) - 0.28 * r
    if shape == "triangle":  # equilateral, circumradius r, so inradius r / 2
        return np.maximum.reduce(
            [u * math.cos(a) + v * math.sin(a) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        ) - r / 2
    if shape == "cross":  # two bars of half-length 0.95 r, half-width 0.3 r
        au, av = np.abs(u), np.abs(v)
        bar = 0.95 * r  # corner at (0.95, 0.3) r lies within the circumradius
        return np.minimum(np.maximum(au - bar, av - 0.3 * r), np.maximum(av - bar, au - 0.3 * r))
    raise ValueError(f"unknown shape {shape!r}: use one of {SHAPES}")


def render_video(spec: VideoSpec) -> np.ndarray:
    """Draws every frame of ``spec``: ``(T, H, W, 3)`` uint8 RGB, anti-aliased.

    Pure: the same spec gives the same array.
    """
    background = render_background(spec.scene, spec.width, spec.height)
    left, top, side = crop_box(spec.width, spec.height)
    centres, diameters = object_track(spec)
    cx = (left + centres[:, 0] * side).astype(np.float32)[:, None, None]
    cy = (top + centres[:, 1] * side).astype(np.float32)[:, None, None]
    radius = (diameters * side / 2).astype(np.float32)[:, None, None]
    dx = np.arange(spec.width, dtype=np.float32)[None, None, :] + 0.5 - cx
    dy = np.arange(spec.height, dtype=np.float32)[None, :, None] + 0.5 - cy
    cos, sin = np.float32(math.cos(spec.rotation)), np.float32(math.sin(spec.rotation))
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    alpha = np.clip(0.5 - _signed_distance(spec.scene.shape, u, v, radius), 0.0, 1.0)[..., None]
    colour = np.asarray(spec.scene.colour, dtype=np.float32)
    frames = background + alpha * (colour - background)
    return (frames + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- writing


def write_dataset(
    output: str,
    videos_per_class: int = DEFAULT_VIDEOS_PER_CLASS,
    seed: int = DEFAULT_SEED,
    *,
    exts: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    seconds: float | None = None,
    fps: float | None = None,
    progress: bool = False,
) -> list[str]:
    """Writes the demo dataset into class folders under ``output`` (a local directory).

    Videos are written into a hidden staging folder first; then each class folder of
    :data:`CLASSES` under ``output`` is replaced, so a re-run leaves exactly the new set.
    Other content of ``output`` is left alone.

    Args:
        output: the dataset root.
        videos_per_class: videos of each class.
        seed: random seed; the same seed gives the same frames.
        exts: containers to draw from, e.g. ``("mp4",)`` (default :data:`EXTS`).
        size: ``(width, height)`` of every video (for tiny test videos).
        seconds: length of every video.
        fps: frame rate of every video.
        progress: show a tqdm progress bar on stderr.

    Returns:
        The written paths, ordered by class, group and clip.
    """
    from tqdm import tqdm

    from pipeline.writer import write_video

    specs = plan_dataset(videos_per_class, seed, exts=exts, size=size, seconds=seconds, fps=fps)
    os.makedirs(output, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".synth-", dir=output)
    try:
        for name in CLASSES:
            os.makedirs(os.path.join(staging, name))
        for spec in tqdm(specs, desc="synth", unit="video", disable=not progress, file=sys.stderr):
            write_video(os.path.join(staging, spec.relpath), render_video(spec), spec.fps, spec.ext)
        for name in CLASSES:
            target = os.path.join(output, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOGGER.info("wrote %d videos to %s", len(specs), output)
    return [os.path.join(output, spec.relpath) for spec in specs]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.synth",
        description="Write the demo dataset: videos in class folders whose classes differ only in motion.",
    )
    parser.add_argument("--output", required=True, help="dataset root; its class folders are replaced")
    parser.add_argument("--videos-per-class", type=int, default=DEFAULT_VIDEOS_PER_CLASS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.videos_per_class < 1:
        parser.error(f"--videos-per-class must be positive, got {args.videos_per_class}")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    return args


def _run(argv: list[str] | None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    paths = write_dataset(
        args.output, args.videos_per_class, args.seed, progress=not args.no_progress
    )
    size_mb = sum(os.path.getsize(p) for p in paths) / 2**20
    print(
        f"synth: {len(paths)} videos ({len(CLASSES)} classes x {args.videos_per_class}, seed {args.seed}) "
        f"in {args.output}, {size_mb:.1f} MiB, {time.perf_counter() - start:.1f} s"
    )


main = cli.harness(_run)


if __name__ == "__main__":
    sys.exit(main())
