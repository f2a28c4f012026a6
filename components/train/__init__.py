"""Train step: a wide-and-deep Keras model over the transformed features, exported for serving."""
