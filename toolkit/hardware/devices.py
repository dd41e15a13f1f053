"""The devices TensorFlow sees, and the switches ``training.precision``, ``training.jit_compile`` and
``training.deterministic`` resolved against them.

- precision: the Keras dtype policy, set only while the model is built (:func:`precision_policy`): Keras' policy
  is process-global and a sweep trains many models in one process. Layers keep the policy they were built
  under (and save it in ``model.keras``), and ``compile()`` wraps the optimizer in Keras' ``LossScaleOptimizer``
  itself when the model's policy is ``mixed_float16`` (``Trainer.compile``'s ``auto_scale_loss``), so ktk never
  wraps it. Both mixed policies also run on a CPU (a GPU config tried on a laptop or in CI), with no speed gain
  there: README "Training on GPUs".
- XLA: :func:`resolve_jit` (``auto``: on with a GPU, off on the CPU, where it was measured slower).
- op determinism: :func:`set_op_determinism`, on or off for each training (the switch is process-global too).

TensorFlow and Keras are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional


def gpus_visible() -> bool:
    """Whether TensorFlow sees at least one GPU (imports TensorFlow)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def gpu_names() -> List[str]:
    """The name of each GPU TensorFlow sees (``NVIDIA H100 80GB HBM3``), else its device name."""
    import tensorflow as tf

    names = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (ValueError, RuntimeError):
            details = {}
        names.append(str(details.get("device_name") or device.name))
    return names


def training_devices(gpu_visible: Optional[bool] = None) -> List[str]:
    """The devices a run without ``training.distribute`` trains on, as TensorFlow places it: the first GPU,
    else the CPU (``["GPU:0"]`` or ``["CPU:0"]``).

    Args:
        gpu_visible: whether a GPU is visible (default: ask TensorFlow).
    """
    if gpu_visible is None:
        gpu_visible = gpus_visible()
    return ["GPU:0"] if gpu_visible else ["CPU:0"]


def model_devices(model: Any) -> List[str]:
    """The devices `model` trains on: its distribution strategy's (built under ``training.distribute``), else
    :func:`training_devices` (``["GPU:0"]`` or ``["CPU:0"]``)."""
    import tensorflow as tf

    try:
        names = model.distribute_strategy.extended.worker_devices
    except (AttributeError, RuntimeError, NotImplementedError, ValueError):  # the default strategy has none
        return training_devices()
    devices = []
    for name in names:
        spec = tf.DeviceSpec.from_string(name)
        devices.append(f"{spec.device_type}:{spec.device_index}" if spec.device_type else name)
    return devices


def resolve_jit(config: Any, gpu_visible: Optional[bool] = None) -> bool:
    """Whether Keras compiles the training step with XLA: ``training.jit_compile`` resolved.

    ``true``/``false`` are taken as given. ``auto`` is on where a GPU is visible, off on the CPU (XLA was measured
    slower there: README "Training on GPUs"), and off with op determinism (``training.deterministic``) or
    ``training.distribute``, as Keras' own ``auto`` (Keras turns XLA off under op determinism in any case).

    Args:
        config: a :class:`toolkit.config.Config`.
        gpu_visible: whether a GPU is visible (default: ask TensorFlow; only asked for ``auto``).
    """
    training = config.training
    if isinstance(training.jit_compile, bool):
        return training.jit_compile
    if training.deterministic or training.distribute is not None:
        return False
    return bool(gpus_visible() if gpu_visible is None else gpu_visible)


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Keras' global dtype policy set to `precision` inside the block, and put back after it.

    Keras offers no policy scope: the policy is one global value that every layer built reads, so a model of a
    mixed precision is built inside this block, and the next run in the process (a sweep's next trial) starts
    from the policy that was there before. ``float32`` leaves the policy alone (what was set stays: gradient
    checking builds in float64).
    """
    import keras

    if precision == "float32":
        yield
        return
    saved = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(saved)


def output_dtype(precision: str) -> Optional[str]:
    """The dtype of the model's output layer: float32 under a mixed policy (the loss, softmax and sigmoid are
    computed in float32, as Keras' mixed-precision guide advises), else the policy's own (None)."""
    return None if precision == "float32" else "float32"


def set_op_determinism(deterministic: bool) -> Optional[bool]:
    """Turns TensorFlow's op determinism on or off; returns whether it is on now (None when this TensorFlow
    cannot say).

    The switch is process-global: each training sets it, so a run with ``deterministic: false`` after one with
    ``true`` in the same process does get the faster, non-deterministic ops. TensorFlow exports only the switch
    that turns it on; the one that turns it off is asked of its framework module, beside it.
    """
    import tensorflow as tf

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        try:
            from tensorflow.python.framework import config as tf_config

            tf_config.disable_op_determinism()
        except (ImportError, AttributeError):  # pragma: no cover - another TensorFlow: what is on stays on
            pass
    return op_determinism()


def op_determinism() -> Optional[bool]:
    """Whether TensorFlow's op determinism is on (None when this TensorFlow cannot say). TensorFlow exports
    only the switch, so this asks its framework module (the name the switch itself is defined beside)."""
    try:
        from tensorflow.python.framework import config as tf_config

        return bool(tf_config.is_op_determinism_enabled())
    except (ImportError, AttributeError):  # pragma: no cover - another TensorFlow
        return None


def switches_in_effect(config: Any, model: Any) -> Dict[str, Any]:
    """environment.json's ``devices`` (:func:`model_devices`) and ``training_switches``: each switch as asked in the
    config and as in effect for the compiled `model` (its dtype policy, whether Keras compiles it with XLA, op
    determinism)."""
    training = config.training
    return {
        "devices": model_devices(model),
        "training_switches": {
            "precision": {"asked": training.precision, "in_effect": model.dtype_policy.name},
            "jit_compile": {"asked": training.jit_compile, "in_effect": bool(model.jit_compile)},
            "deterministic": {"asked": training.deterministic, "in_effect": op_determinism()},
        },
    }
