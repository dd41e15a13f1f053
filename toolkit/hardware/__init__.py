"""Where training runs: devices, numeric precision, XLA, determinism, and one model over several devices.

- :mod:`toolkit.hardware.devices`: the devices TensorFlow sees, and the switches ``training.precision``,
  ``training.jit_compile`` and ``training.deterministic`` resolved against them (recorded in environment.json);
- :mod:`toolkit.hardware.strategy`: ``training.distribute`` (``mirrored`` on one machine, ``multi_worker`` across
  machines) and the cluster a multi-worker run joins;
- :mod:`toolkit.hardware.gpus`: which GPUs each sweep worker process sees (``ktk tune --gpus/--per-gpu``).

Nothing here imports TensorFlow at module level.
"""
