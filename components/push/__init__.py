"""The push step: publish a blessed model as the next version in the model registry."""
