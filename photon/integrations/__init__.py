"""photon models in other tools: EleutherAI's lm-evaluation-harness (`lm_eval.py`, extra
`eval`), the local tasks it runs offline (`tasks.py`), and Hugging Face `transformers`
(`hf.py`, extra `hf`). Nothing here is imported by `import photon`: each module needs its
optional dependency."""
