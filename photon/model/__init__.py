"""The models: configs and presets, LLaMA-style layers, PhotonLM and the flat TransformerLM,
and their training FLOPs."""
