"""photon models through Hugging Face `transformers` (pip install -e ".[hf]").

    import photon.integrations.hf  # registers the model types "photon" and "transformer"
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained("runs/photon-small")  # or runs/.../step-N
    tokenizer = AutoTokenizer.from_pretrained("runs/photon-small")     # PreTrainedTokenizerFast
    ids = model.generate(**tokenizer("ROMEO:", return_tensors="pt"), max_new_tokens=40)
    model.save_pretrained("exported")  # photon's checkpoint layout: photon.load_model reads it

`import photon` does not import this module: importing transformers takes seconds.

A photon checkpoint already has the Hugging Face layout (config.json with a `model_type`,
model.safetensors, tokenizer files). The `model_type`s photon writes, "photon" (PHOTON and
the Block Transformer) and "transformer" (the flat baseline), are not used by transformers
itself (checked at registration), so every existing checkpoint loads as it is. Loading and
saving go through photon's own `load_model` / `save_checkpoint`: `save_pretrained` writes
exactly the files photon reads, and `from_pretrained` reads local folders only, never a hub.
A run folder loads its latest checkpoint (a run folder carries a config.json for AutoConfig).

`generate` is transformers' own loop (greedy, sampling, beam search, logits processors,
stopping criteria, streamers) over photon's forward pass, without a KV cache: every step
re-reads the whole sequence, so it is exact and slow. photon's decoder (`model.photon.
generate`, HierGen / RecGen with bounded caches) gives the same greedy tokens, fast.
Batches must be right-padded (or unpadded): PHOTON chunks a sequence from its first token,
so left padding would move the chunk boundaries.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import CausalLMOutput
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from photon.checkpoint import CONFIG_FILE, load_model, resolve_checkpoint, save_checkpoint
from photon.data.tokenizer import EOS, Tokenizer
from photon.device import resolve_device
from photon.errors import CheckpointError, DependencyError, InputError
from photon.model.config import ModelConfig, PhotonConfig, TransformerConfig, config_from_dict
from photon.model.lm import Model, build_model

# What transformers' Auto classes pass along that has no meaning for a local photon folder.
HUB_KWARGS = {"cache_dir", "force_download", "local_files_only", "proxies", "revision",
              "token", "trust_remote_code", "adapter_kwargs", "_from_auto", "code_revision",
              "use_safetensors", "_commit_hash"}


def _local_checkpoint(path: str | os.PathLike, kwargs: dict[str, Any]) -> Path:
    """The checkpoint folder a from_pretrained call means; refuses options photon lacks."""
    subfolder = kwargs.pop("subfolder", "") or ""
    unsupported = sorted(set(kwargs) - HUB_KWARGS)
    if unsupported:
        raise InputError(f"from_pretrained: {', '.join(unsupported)} not supported for photon "
                         f"models")
    return resolve_checkpoint(Path(path) / subfolder)


# --- configs ---------------------------------------------------------------------------------

class PhotonHFConfig(PreTrainedConfig):
    """A photon `PhotonConfig` (PHOTON, Block Transformer) as a transformers config: the
    fields of config.json become attributes; `to_photon()` validates and converts back."""

    model_type = PhotonConfig.model_type
    photon_class: ClassVar[type] = PhotonConfig

    def to_photon(self) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(self.photon_class)}
        fields = {k: getattr(self, k) for k in names if hasattr(self, k)}
        return config_from_dict({"model_type": self.model_type, **fields})

    @classmethod
    def from_photon(cls, config: ModelConfig) -> PhotonHFConfig:
        fields = config.to_dict()
        return CONFIGS[fields.pop("model_type")](**fields)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False,
                        **kwargs) -> None:
        """Write config.json exactly as photon does (no transformers bookkeeping keys)."""
        if push_to_hub:
            raise InputError("push_to_hub is not supported for photon models")
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_photon().to_dict(), indent=2) + "\n"
        (Path(save_directory) / CONFIG_FILE).write_text(text)


class PhotonTransformerHFConfig(PhotonHFConfig):
    """The flat baseline's `TransformerConfig` as a transformers config."""

    model_type = TransformerConfig.model_type
    photon_class = TransformerConfig


CONFIGS: dict[str, type[PhotonHFConfig]] = {
    c.model_type: c for c in (PhotonHFConfig, PhotonTransformerHFConfig)}


# --- tokenizer -------------------------------------------------------------------------------

class PhotonTokenizerFast(PreTrainedTokenizerFast):
    """A photon tokenizer (byte-level BPE or raw bytes) as a transformers fast tokenizer: the
    same ids for every text. It pads on the right, and saves in photon's layout."""

    padding_side = "right"

    @classmethod
    def from_photon(cls, tokenizer: Tokenizer) -> PhotonTokenizerFast:
        eos = EOS if tokenizer.eos_id is not None else None
        hf = cls(tokenizer_object=tokenizer.backend, eos_token=eos, pad_token=eos)
        hf.photon = tokenizer
        return hf

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *inputs,
                        **kwargs) -> PhotonTokenizerFast:
        """The tokenizer of a local checkpoint or run folder (its latest checkpoint)."""
        kwargs.pop("config", None)
        return cls.from_photon(Tokenizer.load(_local_checkpoint(pretrained_model_name_or_path,
                                                                kwargs)))

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> tuple[str, ...]:
        """Write photon's tokenizer files (which photon.load_model and this class read)."""
        if kwargs.get("push_to_hub"):
            raise InputError("push_to_hub is not supported for photon tokenizers")
        before = set(Path(save_directory).glob("*")) if Path(save_directory).is_dir() else set()
        self.photon.save(save_directory)
        return tuple(sorted(str(p) for p in set(Path(save_directory).glob("*")) - before))


# --- models ----------------------------------------------------------------------------------

def _check_right_padded(attention_mask: torch.Tensor | None) -> None:
    if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        raise InputError("photon models read right-padded batches only (each row of "
                         "attention_mask: ones, then zeros); left padding would move PHOTON's "
                         "chunk boundaries. For batched generation of prompts of different "
                         "lengths use model.photon.generate, which handles them exactly.")


class PhotonForCausalLM(PreTrainedModel, GenerationMixin):
    """A photon model (`self.photon`) behind transformers' causal-LM interface."""

    config_class = PhotonHFConfig
    base_model_prefix = "photon"
    main_input_name = "input_ids"

    def __init__(self, config: PhotonHFConfig, model: Model | None = None,
                 tokenizer: Tokenizer | None = None) -> None:
        super().__init__(config)
        self.photon = model if model is not None else build_model(config.to_photon())
        self.photon_tokenizer = tokenizer
        eos = tokenizer.eos_id if tokenizer is not None else None
        # No transformers KV cache: each generation step runs the full forward pass.
        self.generation_config.use_cache = False
        self.generation_config.eos_token_id = self.generation_config.pad_token_id = eos
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing to do: photon's modules initialise themselves when built."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> CausalLMOutput:
        """Logits [B, T, V] (`logits[:, i]` predicts token i+1) and, with labels, photon's
        training loss (labels are shifted inside, -100 is ignored)."""
        if kwargs.get("inputs_embeds") is not None or kwargs.get("cache") is not None:
            raise InputError("photon models take input_ids only, without a transformers cache")
        _check_right_padded(attention_mask)
        out = self.photon(input_ids, labels=labels)
        return CausalLMOutput(loss=out.loss, logits=out.logits)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args,
                        config: PreTrainedConfig | None = None, dtype: Any = None,
                        torch_dtype: Any = None, device_map: Any = None,
                        **kwargs) -> PhotonForCausalLM:
        """A local checkpoint or run folder (its latest checkpoint), through photon's
        load_model. `dtype` (a torch dtype, its name, or "auto": as saved) and `device_map`
        (one device, or "auto": cuda if there is one) are honoured; nothing is downloaded."""
        if model_args:
            raise InputError("from_pretrained: positional model arguments are not supported")
        ckpt = _local_checkpoint(pretrained_model_name_or_path, kwargs)
        if device_map == "auto":
            device_map = resolve_device()
        if isinstance(device_map, dict):
            raise InputError("from_pretrained: device_map must name one device")
        model, tokenizer = load_model(ckpt, device=device_map or "cpu")
        dtype = dtype or torch_dtype
        if dtype not in (None, "auto"):
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        model_class = MODELS[model.config.model_type]
        if issubclass(cls, model_class):
            model_class = cls
        hf = model_class(PhotonHFConfig.from_photon(model.config), model, tokenizer)
        hf.name_or_path = str(pretrained_model_name_or_path)
        return hf.eval()

    def save_pretrained(self, save_directory: str | os.PathLike,
                        tokenizer: Tokenizer | PhotonTokenizerFast | None = None,
                        is_main_process: bool = True, **kwargs) -> None:
        """Write a photon checkpoint (config.json, model.safetensors, tokenizer files) into
        `save_directory`; other files there are left alone. The tokenizer is the one loaded
        with the model unless given."""
        unsupported = sorted(k for k, v in kwargs.items()
                             if v and k not in ("safe_serialization", "max_shard_size"))
        if unsupported:
            raise InputError(f"save_pretrained: {', '.join(unsupported)} not supported for "
                             f"photon models")
        if not is_main_process:
            return
        tokenizer = getattr(tokenizer, "photon", tokenizer) or self.photon_tokenizer
        if tokenizer is None:
            raise CheckpointError("save_pretrained: this model has no tokenizer (it was not "
                                  "loaded from a checkpoint); pass tokenizer=...")
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target, prefix=".tmp-") as tmp:
            written = save_checkpoint(Path(tmp) / "checkpoint", self.photon, tokenizer)
            for f in written.iterdir():
                os.replace(f, target / f.name)


class PhotonTransformerForCausalLM(PhotonForCausalLM):
    """The flat baseline behind transformers' causal-LM interface."""

    config_class = PhotonTransformerHFConfig


MODELS: dict[str, type[PhotonForCausalLM]] = {
    c.config_class.model_type: c for c in (PhotonForCausalLM, PhotonTransformerForCausalLM)}


def _register() -> None:
    for model_type, config_class in CONFIGS.items():
        if model_type in CONFIG_MAPPING_NAMES:
            raise DependencyError(f"this transformers version defines its own model type "
                                  f"{model_type!r}, which photon's checkpoints use")
        AutoConfig.register(model_type, config_class)
        AutoModelForCausalLM.register(config_class, MODELS[model_type])
        AutoTokenizer.register(config_class, fast_tokenizer_class=PhotonTokenizerFast)


_register()
