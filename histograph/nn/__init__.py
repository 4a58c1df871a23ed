"""Neural network parts: history-returning backbones, readouts and the classifier head."""
