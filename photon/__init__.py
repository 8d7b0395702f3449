"""photon: PHOTON hierarchical autoregressive language models and their baselines."""

from photon.checkpoint import load_model, save_checkpoint
from photon.data.tokenizer import Tokenizer
from photon.errors import CheckpointError, DataError, PhotonError
from photon.model.config import (
    PRESETS,
    ConfigError,
    PhotonConfig,
    TransformerConfig,
    config_from_dict,
    get_preset,
)
from photon.model.flops import training_flops_per_token
from photon.model.lm import ModelOutput, PhotonLM, TransformerLM, build_model, count_parameters

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelOutput",
    "PhotonConfig",
    "PhotonError",
    "PhotonLM",
    "Tokenizer",
    "TransformerConfig",
    "TransformerLM",
    "build_model",
    "config_from_dict",
    "count_parameters",
    "get_preset",
    "load_model",
    "save_checkpoint",
    "training_flops_per_token",
]
