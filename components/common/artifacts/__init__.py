"""One module per artifact a step hands to the next: each alone knows its layout, writes it and
reads it. Steps, the registry, the model server and the tests go through these modules.

    examples     ingest's output: gzip TFRecord splits of tf.Example + metadata.json
    transform    transform's output: the fitted preprocessing + vocabularies + transform.json
    model        train's output: the SavedModel + training.json (lineage) + metrics.json;
                 the model's identity (model_id, signature_hash) and its serving contract
    evaluation   evaluate's output: metrics.json + blessing.json + report.html
    deployment   the deployment record (which versions serve, labels, traffic) and its rules
    prediction_log  the model server's JSONL prediction log, read back (feedback's input)
    feedback     feedback's output: live metrics, A/B verdict, drift, retrain decision

Heavy libraries (TensorFlow, Keras) are imported inside the functions that need them.
"""
