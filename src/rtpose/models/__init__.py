"""Networks (our own PyTorch code), their configurations as data, and weight loading.

Networks know nothing about image coordinates: they take a normalised batch and return raw tensors.
"""

from rtpose.models.spec import ModelSpec, WeightSource, get_spec, list_specs, register

__all__ = ["ModelSpec", "WeightSource", "get_spec", "list_specs", "register"]
