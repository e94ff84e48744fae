"""Stages 2 and 3: classify a request (size, complexity, shape) and decide its model."""
