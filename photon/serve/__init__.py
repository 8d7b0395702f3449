"""`photon serve`: an OpenAI-compatible HTTP server over a continuous-batching engine.

engine.py (the batching loop), sampling.py (per-row sampling), text.py (incremental text with
stop strings), metrics.py (Prometheus), schema.py (the request body and its checks), api.py
(the ASGI app), loadtest.py (a server subprocess and a load generator). The HTTP side needs
the `serve` extra: pip install -e ".[serve]".
"""
