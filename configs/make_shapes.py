"""Writes the generated image folder configs/images_cnn.yaml trains on: configs/data/shapes/<class>/<n>.png.

Three classes of small RGB images (a bright disc, a bright square, horizontal stripes on noise), 40 of each,
16x16 pixels, reproducible from the seed. Usage: python configs/make_shapes.py [FOLDER] [--per-class N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def write_shapes(folder: Path, per_class: int = 40, size: int = 16, seed: int = 0) -> Path:
    """Writes `per_class` PNG images of each class into folder/<class>/; returns `folder`."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    for name in ("disc", "square", "stripes"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, size=(size, size, 3)).astype(np.int64)
            cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
            radius = int(rng.integers(size // 6, size // 3))
            if name == "disc":
                mask = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2
            elif name == "square":
                mask = (abs(rows - cy) <= radius) & (abs(cols - cx) <= radius)
            else:
                mask = (rows // 2) % 2 == 0
            pixels[mask] += 150
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name / f"{i:03d}.png")
    return folder


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).parent / "data" / "shapes"))
    parser.add_argument("--per-class", type=int, default=40)
    args = parser.parse_args()
    print(write_shapes(Path(args.folder), args.per_class))
