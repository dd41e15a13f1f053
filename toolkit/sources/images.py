"""The ``images`` source: a folder with one sub-folder of images per class.

Layout (as ``keras.utils.image_dataset_from_directory`` reads it)::

    path/
      cat/  a.jpg  b.png ...
      dog/  c.jpg ...

Class names are the sub-folder names, sorted; an image is any ``.png``, ``.jpg``, ``.jpeg``, ``.bmp`` or ``.gif``
file below its class folder (sub-folders included); other files and hidden entries are ignored.

Images are decoded with Pillow exactly as ``keras.utils.load_img`` does it (``color_mode`` conversion, then a
bilinear resize to ``image_size`` when the image has another size), but without importing TensorFlow, so that
`ktk validate` stays fast. ktk decodes the files itself rather than through ``image_dataset_from_directory``
because the split must be by file, stratified by class and three-way (train, validation, test), reproducible
from the seed and recorded as file lists (``splits/`` of the run directory); that loader's
``validation_split`` is two-way and not stratified.

An image that cannot be read (a damaged or truncated file, or not an image) is **skipped**: the run goes on
without it, with one warning giving the count and the first few files. The split files list the images used.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from toolkit.errors import DataWarning, UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
_PIL_MODE = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}
# cache: auto keeps the decoded images in memory (float32) up to this size; above it, the run is refused.
MEMORY_CACHE_BYTES = 2 * 2**30
MAX_IMAGES = 10_000_000
MAX_PIXELS = 2**28  # one image's pixels at most: Pillow's own guard against decompression bombs is 89M


@dataclass
class ImageFolder:
    """The images of a class-folder tree: paths relative to `root` (posix, sorted), and their class indexes."""

    root: Path
    class_names: List[str]
    files: List[str]
    labels: np.ndarray

    def paths(self, indexes: Optional[Sequence[int]] = None) -> List[str]:
        chosen = self.files if indexes is None else [self.files[i] for i in indexes]
        return [str(self.root / f) for f in chosen]


def scan(root: Path, given: str, where: str = "data.path") -> ImageFolder:
    """The class folders of `root` and the image files in each.

    Raises:
        UserError: not a folder; a folder without class sub-folders (saying what it holds instead); a class
            folder without images; a file name that cannot be written in a split file (a line break in it).
    """
    if not root.is_dir():
        raise UserError("this is a file, not a folder" if root.exists() else "folder not found", where=where,
                        expected="a folder with one sub-folder of images per class", received=given)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as error:
        raise UserError(f"cannot read the folder ({error.strerror})", where=where, received=given) from None
    classes = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
    if not classes:
        images = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
        found = (f"{len(images):,} image file(s) directly in it ({', '.join(images[:3])}"
                 f"{', ...' if len(images) > 3 else ''}) and no sub-folder" if images
                 else f"{len(entries):,} entries and no sub-folder" if entries else "nothing")
        raise UserError(f"{given} has no class sub-folders: it holds {found}", where=where,
                        expected="a folder with one sub-folder of images per class (path/cat/*.jpg, "
                        "path/dog/*.jpg)", received=given)
    if len(classes) < 2:
        raise UserError(f"{given} has a single class folder, {classes[0]!r}", where=where,
                        expected="at least two class folders to learn from", received=given)
    files: List[str] = []
    labels: List[int] = []
    for index, name in enumerate(classes):
        found_files = []
        for folder, subfolders, names in os.walk(root / name):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for file in sorted(names):
                if not file.startswith(".") and file.lower().endswith(IMAGE_EXTENSIONS):
                    relative = (Path(folder) / file).relative_to(root).as_posix()
                    if "\n" in relative or "\r" in relative:
                        raise UserError("an image's name holds a line break, which a split file cannot list",
                                        where=where, expected="file names on one line", received=relative)
                    found_files.append(relative)
            if len(files) + len(found_files) > MAX_IMAGES:
                raise UserError(f"{given} holds more than {MAX_IMAGES:,} images", where=where,
                                expected=f"at most {MAX_IMAGES:,} images")
        if not found_files:
            raise UserError(f"class folder {name!r} of {given} holds no images", where=where,
                            expected=f"image files ({', '.join(IMAGE_EXTENSIONS)}) in every class folder",
                            received=name)
        files += found_files
        labels += [index] * len(found_files)
    return ImageFolder(root, classes, files, np.asarray(labels, dtype=np.int64))


def image_shape(folder: ImageFolder, image_size: Optional[Sequence[int]], color_mode: str, given: str,
                where: str = "data.path") -> Tuple[Tuple[int, int, int], np.ndarray]:
    """The (height, width, channels) every image becomes, and which files can be read (their headers).

    Raises:
        UserError: images of several sizes without ``image_size`` (with the sizes found), or no readable image.
    """
    from PIL import Image

    readable = np.ones(len(folder.files), dtype=bool)
    sizes: Dict[Tuple[int, int], List[str]] = {}
    for i, path in enumerate(folder.paths()):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception:  # noqa: BLE001 - not an image, damaged: skipped (and counted)
            readable[i] = False
            continue
        if image_size is None:
            sizes.setdefault((height, width), []).append(folder.files[i])
    if not readable.any():
        raise UserError(f"none of the {len(folder.files):,} image files of {given} can be read", where=where,
                        expected="readable .png, .jpg, .jpeg, .bmp or .gif images", received=given)
    if image_size is None and len(sizes) > 1:
        counted = sorted(sizes.items(), key=lambda item: -len(item[1]))
        shown = "; ".join(f"{h}x{w} ({len(names):,} images, e.g. {names[0]})" for (h, w), names in counted[:4])
        more = f"; and {len(counted) - 4} more sizes" if len(counted) > 4 else ""
        raise UserError(f"the images of {given} have {len(sizes)} sizes (height x width): {shown}{more}",
                        where="data.image_size", expected="data.image_size: [height, width], the size every "
                        "image is resized to (e.g. [{}, {}])".format(*counted[0][0]), received=None)
    height, width = image_size if image_size is not None else next(iter(sizes))
    if height * width > MAX_PIXELS:
        raise UserError(f"images of {height}x{width} pixels are larger than ktk trains on", where="data.image_size",
                        expected=f"at most {MAX_PIXELS:,} pixels per image", received=[height, width])
    return (int(height), int(width), CHANNELS[color_mode]), readable


def load_image(path: str, shape: Tuple[int, int, int], color_mode: str) -> np.ndarray:
    """One image as uint8 (height, width, channels), as ``keras.utils.load_img`` decodes it (Pillow: mode
    conversion, then a bilinear resize when its size differs). Raises what Pillow raises."""
    from PIL import Image

    with open(path, "rb") as handle, Image.open(handle) as image:
        image = image.convert(_PIL_MODE[color_mode])
        if image.size != (shape[1], shape[0]):
            image = image.resize((shape[1], shape[0]), Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return array.reshape(shape)


def decode(folder: ImageFolder, indexes: np.ndarray, shape: Tuple[int, int, int], color_mode: str
           ) -> Tuple[np.ndarray, np.ndarray]:
    """The images at `indexes` as one uint8 array, and the indexes that could be decoded (others skipped)."""
    pixels = np.empty((len(indexes), *shape), dtype=np.uint8)
    kept = np.ones(len(indexes), dtype=bool)
    for row, index in enumerate(indexes):
        try:
            pixels[row] = load_image(str(folder.root / folder.files[index]), shape, color_mode)
        except Exception:  # noqa: BLE001 - damaged or truncated: skipped (and counted)
            kept[row] = False
    return pixels[kept], np.asarray(indexes)[kept]


def warn_skipped(folder: ImageFolder, skipped: Sequence[int], given: str) -> None:
    """One warning for the images that could not be read."""
    if not len(skipped):
        return
    names = ", ".join(folder.files[i] for i in list(skipped)[:3]) + (", ..." if len(skipped) > 3 else "")
    warnings.warn(f"skipped {len(skipped):,} of {len(folder.files):,} images of {given} that cannot be read "
                  f"(damaged, truncated or not images): {names}", DataWarning, stacklevel=3)


def decoded_bytes(count: int, shape: Tuple[int, int, int]) -> int:
    """The memory `count` decoded images take as float32 (what training reads)."""
    return int(count) * int(np.prod(shape)) * 4
