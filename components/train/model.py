"""The wide-and-deep model over transformed features (ids from the preprocessing model)."""

from __future__ import annotations

from components.common.dataset_config import DatasetConfig


def _masked_mean_layer():
    import keras
    from keras import ops

    class MaskedMean(keras.layers.Layer):
        """Mean of token embeddings over real tokens (id > 0); 0 for an empty narrative.

        Keras' own masked average divides by zero when every position is padding.
        """

        def call(self, embedded, token_ids):
            mask = ops.cast(ops.expand_dims(token_ids > 0, -1), embedded.dtype)
            total = ops.sum(embedded * mask, axis=1)
            return total / ops.maximum(ops.sum(mask, axis=1), 1.0)

    return MaskedMean


def build_model(config: DatasetConfig, vocabulary_sizes: dict[str, int], hparams: dict):
    """Wide: one-hot categorical ids into a linear logit. Deep: embeddings of the ids and the
    averaged narrative token embeddings through a dense tower. Output: P(positive)."""
    import keras

    categorical = [*config.features.get("categorical", ()),
                   *config.features.get("bucketized", ())]
    text = list(config.features.get("text", ()))
    inputs = {name: keras.Input(shape=(), dtype="int64", name=name) for name in categorical}
    inputs.update({name: keras.Input(shape=(None,), dtype="int64", name=name) for name in text})

    wide_parts, deep_parts = [], []
    for name in categorical:
        size = vocabulary_sizes[name]
        wide_parts.append(keras.layers.CategoryEncoding(
            num_tokens=size, output_mode="one_hot", name=f"{name}_onehot")(inputs[name]))
        embedded = keras.layers.Embedding(size, hparams["embedding_dim"],
                                          name=f"{name}_embedding")(inputs[name])
        deep_parts.append(embedded)
    masked_mean = _masked_mean_layer()
    for name in text:
        embedded = keras.layers.Embedding(vocabulary_sizes[name], hparams["embedding_dim"],
                                          name=f"{name}_embedding")(inputs[name])
        deep_parts.append(masked_mean(name=f"{name}_mean")(embedded, inputs[name]))

    wide = keras.layers.Concatenate(name="wide_features")(wide_parts)
    wide_logit = keras.layers.Dense(1, name="wide_logit")(wide)
    deep = keras.layers.Concatenate(name="deep_features")(deep_parts)
    for i, units in enumerate(hparams["hidden_units"]):
        deep = keras.layers.Dense(units, activation="relu", name=f"deep_{i}")(deep)
        deep = keras.layers.Dropout(hparams["dropout"], name=f"dropout_{i}")(deep)
    deep_logit = keras.layers.Dense(1, name="deep_logit")(deep)
    logit = keras.layers.Add(name="logit")([wide_logit, deep_logit])
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    model = keras.Model(inputs, probability, name="wide_and_deep")
    model.compile(**compile_options(hparams))
    return model


def compile_options(hparams: dict) -> dict:
    """Optimizer, loss and the eval metrics train reports (also the DP-SGD model's)."""
    import keras

    return {
        "optimizer": keras.optimizers.Adam(hparams["learning_rate"]),
        "loss": "binary_crossentropy",
        "metrics": [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy"),
                    keras.metrics.Precision(name="precision"),
                    keras.metrics.Recall(name="recall")],
    }
