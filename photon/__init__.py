"""photon: PHOTON hierarchical autoregressive language models and their baselines."""

from photon.config import (
    PRESETS,
    ConfigError,
    PhotonConfig,
    TransformerConfig,
    config_from_dict,
    get_preset,
)
from photon.flops import training_flops_per_token
from photon.model import ModelOutput, PhotonLM, TransformerLM, build_model, count_parameters

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ConfigError",
    "ModelOutput",
    "PhotonConfig",
    "PhotonLM",
    "TransformerConfig",
    "TransformerLM",
    "build_model",
    "config_from_dict",
    "count_parameters",
    "get_preset",
    "training_flops_per_token",
]
