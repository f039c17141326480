"""Horovod/PyTorch training: entry points, data loading, the model. torch is imported lazily."""
