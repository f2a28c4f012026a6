"""Custom Keras layers of the preprocessing; registered so a saved preprocessing model reloads."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cfpb")
class ZipPrefix(keras.layers.Layer):
    """Bucketizes ZIP-like codes by their first digits: 24540-2342 and 24540 -> 245, 606XX -> 606.

    Codes whose first `digits` characters are not all digits (and blanks) map to "", which the
    following lookup treats as one more category.
    """

    def __init__(self, digits: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.digits = digits

    def call(self, codes):
        prefix = tf.strings.substr(tf.strings.strip(codes), 0, self.digits)
        valid = tf.strings.regex_full_match(prefix, f"[0-9]{{{self.digits}}}")
        return tf.where(valid, prefix, tf.zeros_like(prefix))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "digits": self.digits}
