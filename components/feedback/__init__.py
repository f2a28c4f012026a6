"""The feedback step: the prediction log meets late labels; live metrics, drift, retrain."""
