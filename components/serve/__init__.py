"""The local model server: TF Serving's REST and gRPC APIs over the registry's deployed versions."""
