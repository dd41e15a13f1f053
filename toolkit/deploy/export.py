"""``ktk export``: a run's model, preprocessing included, in a format other programs serve.

Through Keras' own ``Model.export``: ``saved_model`` (TensorFlow SavedModel, endpoint ``serve``),
``litert`` (a ``.tflite`` file, by TensorFlow's converter) and ``onnx`` (needs the ``tf2onnx`` and
``onnx`` packages: ``pip install tf2onnx onnx``). The artifact takes the same raw inputs as ``model.keras``
(see ``labels.json``), which is copied beside it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

from toolkit.errors import UserError, reason
from toolkit.results import LABELS_FILE, check_outside, check_path_given

FORMATS = {"saved_model": "tf_saved_model", "litert": "litert", "onnx": "onnx"}
NEEDS = {"onnx": ("tf2onnx", "onnx")}  # converter packages ktk does not install


def export_run(run_dir: Union[str, Path], fmt: str, out: Union[str, Path]) -> Path:
    """Exports a run's (or a sweep's best) model to `out`, which must not exist.

    ``saved_model`` writes a folder; ``litert`` and ``onnx`` write one file (``out``), and ``labels.json``
    goes beside it as ``<out>.labels.json``.

    Raises:
        UserError: an unknown format, a missing converter package, an existing `out` (or ``<out>.labels.json``),
            an `out` inside the run directory, or a model the converter refuses.
    """
    from toolkit.deploy.predict import load_run, resolve_run_dir

    if fmt not in FORMATS:
        raise UserError(where="--format", expected="an export format", received=fmt, choices=sorted(FORMATS))
    missing = [name for name in NEEDS.get(fmt, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"exporting to {fmt} needs the package(s) {', '.join(missing)}, which are not installed",
                        where="--format", expected=f"`pip install {' '.join(missing)}` first, or another format",
                        received=fmt, choices=sorted(FORMATS))
    out = Path(out)
    check_path_given(out, "--out", "a new path to write", problem="an empty path")
    if out.exists() or out.is_symlink():
        raise UserError("the path already exists; ktk export never replaces anything", where="--out",
                        expected="a new path", received=str(out))
    labels_path = out.with_name(out.name + "." + LABELS_FILE) if fmt != "saved_model" else None
    if labels_path is not None and (labels_path.exists() or labels_path.is_symlink()):
        raise UserError(f"{labels_path} already exists; ktk export writes the model's labels there, beside it, and "
                        "never replaces anything", where="--out", expected="a path whose .labels.json is new too",
                        received=str(out))
    if not out.parent.is_dir():
        raise UserError(f"the folder {out.parent} does not exist", where="--out", received=str(out))
    run_path = resolve_run_dir(run_dir)
    check_outside(out, [run_dir, run_path], "--out", what="the run directory this command reads")
    loaded = load_run(run_dir)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:
        raise UserError(f"cannot write there ({error.strerror or error})", where="--out", received=str(out)) from None
    try:
        artifact = staging / ("model" if fmt == "saved_model" else out.name)
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the endpoints it wrote
            try:
                loaded.model.export(str(artifact), format=FORMATS[fmt], verbose=False)
            except Exception as error:  # noqa: BLE001 - the converter's refusal, in its words
                raise UserError(f"the {fmt} converter refused this model ({reason(error)})", where="--format",
                                received=fmt, choices=sorted(FORMATS)) from None
        shutil.copyfile(loaded.run_dir / LABELS_FILE, staging / "labels")
        _place(artifact, staging / "labels", out, labels_path)
    except OSError as error:
        raise UserError(f"cannot write the export ({error.strerror or error})", where="--out",
                        received=str(out)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _place(artifact: Path, labels: Path, out: Path, labels_path: Optional[Path]) -> None:
    """Moves the finished export to `out` without ever replacing anything made there meanwhile: a folder is
    created exclusively and filled, a file is hard-linked (both fail if the name is taken)."""
    try:
        if labels_path is None:  # a SavedModel folder, labels.json inside
            os.mkdir(out)
            for item in artifact.iterdir():
                os.rename(item, out / item.name)
            os.rename(labels, out / LABELS_FILE)
        else:
            os.link(labels, labels_path)
            try:
                os.link(artifact, out)
            except BaseException:
                os.unlink(labels_path)
                raise
    except FileExistsError as error:
        raise UserError("a file of this name appeared while ktk was exporting; it was left as it is",
                        where="--out", expected="a new path", received=error.filename or str(out)) from None
