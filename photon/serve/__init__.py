"""`photon serve`: an OpenAI-compatible HTTP server over a continuous-batching engine.

The engine: engine.py (the batching loop), scheduler.py (admission), runner.py (the model
step), request.py (the engine's request), output.py (what it answers: text, stop strings,
log-probabilities), sampling.py (per-row sampling), text.py (prompts to token ids within a
bound, generated tokens to text), metrics.py (Prometheus). The HTTP side: api.py (the ASGI
app), http.py (uvicorn's protocol: a deadline for every request head, a bound on
connections), body.py (reading a body: its size, time and memory), parsing.py (a body into
engine requests), schema.py (the request bodies and their checks), responses.py (OpenAI's
answers); loadtest.py (a server subprocess and a load generator). The HTTP side needs the
`serve` extra: pip install -e ".[serve]".
"""
