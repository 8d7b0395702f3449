"""A bare MQAR training loop to find what makes a tiny model learn recall fast: fp32, AdamW
without weight decay at a constant rate, no warm-up; the validation accuracy at the values
every 250 steps (256 sequences of the validation stream).

    python pilot_in_process.py T K[,K...] STEPS BATCH LR [LAYERS]   # vanilla-tiny, LAYERS deep
    PRESET=photon-tiny-bounded VOCAB=1024 python pilot_in_process.py 64 4 1000 64 1e-3

Environment: VOCAB (default 64), PRESET (default vanilla-tiny), FILL (noise or queries), EXTRA
(JSON config overrides, e.g. '{"n_heads": 1}'), BETA2 (Adam's, default 0.999; photon train's
is 0.95), WARMUP (linear warm-up steps, default 0; photon train's is 150), SEED (the
initialisation's, default 0). Prints: step,
training loss, validation accuracy, seconds.
"""

import json
import os
import sys
import time

import torch

import photon
from photon.evaluation.recall import MQAR, VALIDATION, value_scores

T, STEPS, BATCH, LR = int(sys.argv[1]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
K = tuple(int(k) for k in sys.argv[2].split(","))  # mixed as photon train mixes them
LAYERS = int(sys.argv[6]) if len(sys.argv) > 6 else 5
VOCAB = int(os.environ.get("VOCAB", 64))
PRESET = os.environ.get("PRESET", "vanilla-tiny")

torch.manual_seed(int(os.environ.get("SEED", 0)))  # the initialisation
task = MQAR(K, VOCAB, fill=os.environ.get("FILL", "noise"))
shape = {"n_layers": LAYERS} if PRESET.startswith("vanilla") else {}
config = photon.get_preset(PRESET).replace(vocab_size=VOCAB, max_seq_len=T, **shape,
                                           **json.loads(os.environ.get("EXTRA", "{}")))
model = photon.build_model(config)
BETA2 = float(os.environ.get("BETA2", 0.999))
WARMUP = int(os.environ.get("WARMUP", 0))  # linear warm-up steps, then constant
optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9, BETA2))
schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (WARMUP + 1)))
val = task.batch(list(range(256)), T, 0, stream=VALIDATION)
start = time.time()
for step in range(STEPS):
    b = task.batch(list(range(step * BATCH, (step + 1) * BATCH)), T, 0)
    loss = model(b.ids, labels=b.labels).loss
    loss.backward()
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    if step % 250 == 0 or step == STEPS - 1:
        with torch.no_grad():
            _, recalled, values = value_scores(model(val.ids).logits, val.labels)
        print(step, round(loss.item(), 3), "val acc", round(recalled / values, 3),
              round(time.time() - start), flush=True)
