"""Custom Keras layers for the tests, supplied the Keras way: registered serializable classes in a module.

Configs name them by their registered name, e.g. ``class_name: ktk_tests>WrongGradientDense``.
"""

import keras
import tensorflow as tf


@tf.custom_gradient
def _cube_with_wrong_gradient(z):
    def gradient(upstream):
        return upstream * 2.0 * z  # deliberately wrong: d(z^3)/dz is 3 z^2

    return z * z * z, gradient


@tf.custom_gradient
def _cube(z):
    def gradient(upstream):
        return upstream * 3.0 * z * z

    return z * z * z, gradient


class _CubeDense(keras.layers.Layer):
    """A Dense layer followed by z -> z^3, with a hand-written gradient."""

    cube = staticmethod(_cube)

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform",
                                      name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, inputs):
        return self.cube(tf.matmul(inputs, self.kernel) + self.bias)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="ktk_tests")
class WrongGradientDense(_CubeDense):
    """Its backward pass is wrong on purpose: gradient checking must catch it."""

    cube = staticmethod(_cube_with_wrong_gradient)


@keras.saving.register_keras_serializable(package="ktk_tests")
class CubeDense(_CubeDense):
    """The same layer with the right gradient."""


@keras.saving.register_keras_serializable(package="ktk_tests")
class NoisyIdentity(keras.layers.Layer):
    """Adds fresh noise at every training call (a stateful TensorFlow random op, outside Keras' seeding):
    a random cost that gradient checking cannot switch off."""

    def call(self, inputs, training=False):
        if training:
            return inputs + tf.random.normal(tf.shape(inputs), stddev=0.1, dtype=inputs.dtype)
        return inputs
