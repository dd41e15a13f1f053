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
from typing import Union

from toolkit.errors import UserError, reason
from toolkit.results import LABELS_FILE

FORMATS = {"saved_model": "tf_saved_model", "litert": "litert", "onnx": "onnx"}
NEEDS = {"onnx": ("tf2onnx", "onnx")}  # converter packages ktk does not install


def export_run(run_dir: Union[str, Path], fmt: str, out: Union[str, Path]) -> Path:
    """Exports a run's (or a sweep's best) model to `out`, which must not exist.

    ``saved_model`` writes a folder; ``litert`` and ``onnx`` write one file (``out``), and ``labels.json``
    goes beside it as ``<out>.labels.json``.

    Raises:
        UserError: an unknown format, a missing converter package, an existing `out`, or a model the
            converter refuses.
    """
    from toolkit.deploy.predict import load_run

    if fmt not in FORMATS:
        raise UserError(where="--format", expected="an export format", received=fmt, choices=sorted(FORMATS))
    missing = [name for name in NEEDS.get(fmt, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"exporting to {fmt} needs the package(s) {', '.join(missing)}, which are not installed",
                        where="--format", expected=f"`pip install {' '.join(missing)}` first, or another format",
                        received=fmt, choices=sorted(FORMATS))
    out = Path(out)
    if str(out) == "":
        raise UserError("an empty path", where="--out", expected="a new path to write", received="")
    if out.exists() or out.is_symlink():
        raise UserError("the path already exists; ktk export never replaces anything", where="--out",
                        expected="a new path", received=str(out))
    if not out.parent.is_dir():
        raise UserError(f"the folder {out.parent} does not exist", where="--out", received=str(out))
    loaded = load_run(run_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        artifact = staging / ("model" if fmt == "saved_model" else out.name)
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the endpoints it wrote
            try:
                loaded.model.export(str(artifact), format=FORMATS[fmt], verbose=False)
            except Exception as error:  # the converter's refusal, in its words
                raise UserError(f"the {fmt} converter refused this model ({reason(error)})", where="--format",
                                received=fmt, choices=sorted(FORMATS)) from None
        if fmt == "saved_model":
            shutil.copyfile(loaded.run_dir / LABELS_FILE, artifact / LABELS_FILE)
            os.replace(artifact, out)
        else:
            shutil.copyfile(loaded.run_dir / LABELS_FILE, staging / "labels")
            os.replace(artifact, out)
            labels_path = out.with_name(out.name + "." + LABELS_FILE)
            if not labels_path.exists():
                os.replace(staging / "labels", labels_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
