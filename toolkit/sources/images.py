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

``cache``: ``memory`` decodes every image once into one array (``toolkit.data.Dataset``); ``none`` keeps only
the file lists (:class:`ImageFiles`) and decodes each batch's files again every epoch through ``tf.data``, so
that a folder larger than memory trains; ``auto`` is ``memory`` up to :data:`MEMORY_CACHE_BYTES`, else ``none``.
With ``none``, one pass before training decodes every image once (a file that cannot be decoded is skipped, as
with ``memory``) and keeps each image's per-channel sums, so that the split, the skipped files and the
training-split statistics are those of ``memory``; and since an epoch's order is the same function of (seed,
epoch) over the same examples, both train alike (up to the float rounding of the statistics' sums). Both decode
with Pillow, as ``ktk predict`` does.
"""

from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from toolkit.errors import DataWarning, UserError, carried, first_line
from toolkit.sources.pipelines import Pipelines, epoch_shuffled

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
_PIL_MODE = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}
# cache: auto keeps the decoded images in memory (float32) up to this size; above it, they are decoded from their
# files every epoch (cache: none).
MEMORY_CACHE_BYTES = 2 * 2**30
MAX_IMAGES = 10_000_000
MAX_PIXELS = 2**28  # the pixels of image_size at most
# One image file's pixels at most (Pillow's default guard against decompression bombs): ktk's own limit, whatever
# PIL.Image.MAX_IMAGE_PIXELS the process set (ktk never changes that global).
MAX_FILE_PIXELS = 89_478_485
TOO_LARGE = f"too large: more than {MAX_FILE_PIXELS:,} pixels"


class ImageTooLarge(ValueError):
    """An image file of more pixels than :data:`MAX_FILE_PIXELS` (a possible decompression bomb): not decoded."""


@contextmanager
def open_image(source: Any) -> Iterator[Any]:
    """Pillow's ``Image.open`` of a path or binary file, refusing an image of more than :data:`MAX_FILE_PIXELS`
    pixels (:class:`ImageTooLarge`) from its header, before anything is decoded."""
    from PIL import Image

    try:
        if threading.current_thread() is threading.main_thread():
            with warnings.catch_warnings():  # ktk says it below (catch_warnings is not thread-safe: main thread only)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(source)
        else:
            image = Image.open(source)
    except Image.DecompressionBombError:
        raise ImageTooLarge(TOO_LARGE) from None
    with image:
        width, height = image.size
        if width * height > MAX_FILE_PIXELS:
            raise ImageTooLarge(f"{width}x{height} pixels, {TOO_LARGE}")
        yield image


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


def scan(root: Path, given: str, where: str = "data.path", min_classes: int = 2) -> ImageFolder:
    """The class folders of `root` and the image files in each (at least `min_classes`: training needs two;
    ``ktk predict --evaluate`` may evaluate on one).

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
    if len(classes) < min_classes:
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
                where: str = "data.path") -> Tuple[Tuple[int, int, int], np.ndarray, Set[int]]:
    """The (height, width, channels) every image becomes, which files can be read (their headers), and which of
    those that cannot are too large (more than :data:`MAX_FILE_PIXELS` pixels).

    Raises:
        UserError: images of several sizes without ``image_size`` (with the sizes found), or no readable image.
    """
    readable = np.ones(len(folder.files), dtype=bool)
    too_large: Set[int] = set()
    sizes: Dict[Tuple[int, int], List[str]] = {}
    for i, path in enumerate(folder.paths()):
        try:
            with open_image(path) as image:
                width, height = image.size
        except ImageTooLarge:
            readable[i] = False
            too_large.add(i)
            continue
        except Exception:  # noqa: BLE001 - not an image, damaged: skipped (and counted)
            readable[i] = False
            continue
        if image_size is None:
            sizes.setdefault((height, width), []).append(folder.files[i])
    if not readable.any():
        why = f" ({len(too_large):,} {TOO_LARGE})" if too_large else ""
        raise UserError(f"none of the {len(folder.files):,} image files of {given} can be read{why}", where=where,
                        expected=f"readable .png, .jpg, .jpeg, .bmp or .gif images of at most {MAX_FILE_PIXELS:,} "
                        "pixels", received=given)
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
    return (int(height), int(width), CHANNELS[color_mode]), readable, too_large


def image_problem(error: BaseException) -> str:
    """What is wrong with an image file, in words (Pillow's own text names its reader object)."""
    from PIL import UnidentifiedImageError

    if isinstance(error, ImageTooLarge):
        return str(error)
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {first_line(error)}"


def load_image(path: str, shape: Tuple[int, int, int], color_mode: str) -> np.ndarray:
    """One image as uint8 (height, width, channels), as ``keras.utils.load_img`` decodes it (Pillow: mode
    conversion, then a bilinear resize when its size differs). Raises what Pillow raises, and
    :class:`ImageTooLarge`."""
    from PIL import Image

    with open(path, "rb") as handle, open_image(handle) as image:
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


def warn_skipped(folder: ImageFolder, skipped: Sequence[int], given: str, too_large: Set[int] = frozenset()) -> None:
    """One warning for the images that could not be read, saying why: too large, or damaged (or not images)."""
    if not len(skipped):
        return
    groups = [(TOO_LARGE, [i for i in skipped if i in too_large]),
              ("damaged, truncated or not images", [i for i in skipped if i not in too_large])]
    reasons = "; ".join(f"{len(files):,} {why}: " + ", ".join(folder.files[i] for i in files[:3])
                        + (", ..." if len(files) > 3 else "") for why, files in groups if files)
    warnings.warn(f"skipped {len(skipped):,} of {len(folder.files):,} images of {given} that cannot be read "
                  f"({reasons})", DataWarning, stacklevel=3)


def decoded_bytes(count: int, shape: Tuple[int, int, int]) -> int:
    """The memory `count` decoded images take as float32 (what training reads)."""
    return int(count) * int(np.prod(shape)) * 4


# ------------------------------------------------------------------------------------- cache: none


def decode_pass(folder: ImageFolder, indexes: np.ndarray, shape: Tuple[int, int, int], color_mode: str
                ) -> Tuple[np.ndarray, np.ndarray]:
    """One pass decoding each image at `indexes` once, keeping none: the indexes that could be decoded, and per
    image (rows aligned with the file list, NaN for others) its per-channel [sum, sum of squares, min, max]."""
    per_image = np.full((len(folder.files), 4, shape[-1]), np.nan)
    kept = np.ones(len(indexes), dtype=bool)
    for row, index in enumerate(indexes):
        try:
            pixels = load_image(str(folder.root / folder.files[index]), shape, color_mode)
        except Exception:  # noqa: BLE001 - damaged or truncated: skipped (and counted), as decode() does
            kept[row] = False
            continue
        flat = pixels.reshape(-1, shape[-1]).astype(np.float64)
        per_image[index] = (flat.sum(axis=0), np.square(flat).sum(axis=0), flat.min(axis=0), flat.max(axis=0))
    return np.asarray(indexes)[kept], per_image


def pass_statistics(method: str, per_image: np.ndarray, train: np.ndarray, shape: Tuple[int, int, int]
                    ) -> Dict[str, object]:
    """``toolkit.data.image_statistics`` of the training images, from the per-image sums of :func:`decode_pass`."""
    if method == "none":
        return {"method": "none"}
    chosen = per_image[train]
    if method == "standard":
        count = max(len(train) * shape[0] * shape[1], 1)
        center = chosen[:, 0].sum(axis=0) / count
        scale = np.sqrt(np.maximum(chosen[:, 1].sum(axis=0) / count - np.square(center), 0.0))
    else:  # minmax
        center = chosen[:, 2].min(axis=0)
        scale = chosen[:, 3].max(axis=0) - center
    scale = np.where(scale > 0, scale, 1.0)
    return {"method": method, "center": center.astype(np.float64), "scale": scale.astype(np.float64),
            "in_model": True}


class ImageFiles(Pipelines):
    """An images folder read from its files each epoch (``cache: none``): file lists, labels and statistics only,
    so it pickles small (a sweep sends it to its trial workers) and memory does not grow with the folder."""

    kind = "image files"

    def __init__(self, root: str, split_files: Dict[str, List[str]], labels: Dict[str, np.ndarray],
                 shape: Tuple[int, int, int], color_mode: str, task: str, class_names: List[str],
                 normalization: Dict[str, object], inputs: object):
        self.root = str(root)
        self.split_files = split_files
        self.labels = labels
        self.shape = tuple(int(d) for d in shape)
        self.input_shape = self.shape
        self.color_mode = color_mode
        self.task = task
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.normalization = normalization
        self.inputs = inputs  # type: ignore[assignment]
        self.target_name = "class folder"
        self.counts = {name: len(files) for name, files in split_files.items()}
        self.class_counts = np.bincount(np.asarray(labels["train"], dtype=np.int64),
                                        minlength=len(class_names)).tolist()

    def _files(self, name: str) -> object:
        import tensorflow as tf

        paths = [os.path.join(self.root, f) for f in self.split_files[name]]
        kind = np.int32 if self.task == "multiclass" else np.float32
        return tf.data.Dataset.from_tensor_slices((paths, np.asarray(self.labels[name], dtype=kind)))

    def _decoded(self, dataset: object) -> object:
        import tensorflow as tf

        shape, mode = self.shape, self.color_mode

        @carried  # raised out of tf.data by toolkit.errors.raise_carried
        def load(path: bytes) -> np.ndarray:
            name = path.decode()
            try:
                return load_image(name, shape, mode)
            except Exception as error:  # noqa: BLE001 - read in the pass before training: it changed since
                problem = image_problem(error)
                raise UserError(f"an image read in the pass before training can no longer be read ({problem})",
                                where="data.path", expected="the images left as they were until the run ends",
                                received=name) from None

        def read(path: object, label: object) -> object:
            pixels = tf.numpy_function(load, [path], tf.uint8, stateful=False)
            pixels.set_shape(shape)
            return tf.cast(pixels, tf.float32), label

        return dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)  # type: ignore[attr-defined]

    def train(self, batch: int, seed: int, epoch: object, shuffle: bool = True) -> object:
        import tensorflow as tf

        files = self._files("train")
        size = self.counts["train"]
        if shuffle:  # the whole file list, each epoch's order as make_dataset's of (seed, epoch): as cache: memory
            files = epoch_shuffled(lambda s: files.shuffle(size, seed=s, reshuffle_each_iteration=False),
                                   seed, epoch)
            files = files.apply(tf.data.experimental.assert_cardinality(size))
        return self._decoded(files).batch(batch).prefetch(tf.data.AUTOTUNE)

    def split(self, name: str, batch: int) -> object:
        import tensorflow as tf

        return self._decoded(self._files(name)).batch(batch).prefetch(tf.data.AUTOTUNE)

    def without_test(self) -> "ImageFiles":
        import copy

        clone = copy.copy(self)
        clone.has_test = False
        clone.split_files = {**self.split_files, "test": []}
        clone.labels = {**self.labels, "test": np.zeros(0, dtype=np.int64)}
        return clone
