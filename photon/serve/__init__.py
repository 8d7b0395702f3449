"""`photon serve`: an OpenAI-compatible HTTP server over a continuous-batching engine.

The engine: engine.py (the batching loop), scheduler.py (admission), runner.py (the model
step), request.py (the engine's request), output.py (what it answers: text, stop strings,
log-probabilities), sampling.py (per-row sampling), text.py (incremental text with stop
strings), metrics.py (Prometheus). The HTTP side: api.py (the ASGI app), http.py (uvicorn's
protocol with a deadline for request heads), body.py (reading a body), parsing.py
(a body into engine requests), schema.py (the request bodies and their checks), responses.py
(OpenAI's answers); loadtest.py (a server subprocess and a load generator). The HTTP side
needs the `serve` extra: pip install -e ".[serve]".
"""
