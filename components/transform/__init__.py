"""Transform step: preprocessing fitted on the train split, saved to travel inside the model."""
