"""spot-artifacts training: Jenni & Favaro 2018 (learning to spot artifacts) in PyTorch."""

from .config import Config, load_config
from .networks import build_networks

__all__ = ["Config", "load_config", "build_networks"]
