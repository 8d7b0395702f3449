"""FSDP2 under torchrun (gloo, CPU): same training as one process, a checkpoint that is the
trained model in the Hugging Face layout, and an exact resume after SIGKILL.

Tolerance: one process and two FSDP processes compute the same global batch, but the
gradient reduction (reduce-scatter) and the sharded norm sum in another order, so losses
agree to 1e-4 relative (fp32), logits to 1e-4 absolute. Within FSDP, a resumed run is
bitwise equal to an uninterrupted one.
"""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import photon
from photon.cli import main as cli_main
from photon.data.prepare import prepare
from photon.data.shards import load_tokens
from photon.evaluation.validation import validation_scores
from photon.training.parallel import Distributed
from tests.corpus import corpus_folder

COMMON = ["--preset", "photon-tiny", "--seq-len", "64", "--batch-size", "8", "--micro-batch",
          "2", "--dtype", "fp32", "--eval-tokens", "1024", "--log-every", "1", "--eval-every",
          "4", "--save-every", "2", "--keep", "10", "--max-steps", "8"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A prepared directory of the fixed test corpus (bytes tokenizer)."""
    root = tmp_path_factory.mktemp("fsdp")
    prepare(corpus_folder(root), root / "prepared", "bytes", progress=False)
    return root


def torchrun(out: Path, *extra: str) -> list[str]:
    """photon train in two processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "photon.cli", "train", *extra, "--out", str(out)]


def rows(out: Path, key: str) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r[key] for r in map(json.loads, lines) if key in r]


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (torchrun's workers run in their own sessions)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.e2e
def test_fsdp_matches_one_process_and_resumes_exactly(data):
    prepared = ["--data", str(data / "prepared")]
    one, two, killed = data / "one", data / "two", data / "killed"
    assert cli_main(["train", *COMMON, *prepared, "--out", str(one)]) == 0  # one process
    subprocess.run(torchrun(two, *COMMON, *prepared, "--parallel", "fsdp"), check=True,
                   env=ENV, capture_output=True)
    np.testing.assert_allclose(rows(two, "loss"), rows(one, "loss"), rtol=1e-4)
    assert len(rows(two, "loss")) == 8

    # The gathered checkpoint is the trained model: the same logits as the one-process
    # model, and exactly the validation loss the FSDP run logged at its last step.
    fsdp_model, tok = photon.load_model(two)
    one_model, _ = photon.load_model(one)
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fsdp_model(ids).logits, one_model(ids).logits, rtol=0,
                                   atol=1e-4)
    result = validation_scores(fsdp_model, load_tokens(data / "prepared", "val"), 64, 1024,
                               torch.tensor(tok.token_bytes(), dtype=torch.float64), nullcontext,
                               Distributed("cpu"))
    assert result["val_loss"] == pytest.approx(rows(two, "val_loss")[-1], rel=1e-6)

    # Kill both FSDP workers once a checkpoint exists, resume under torchrun.
    proc = subprocess.Popen(torchrun(killed, *COMMON, *prepared, "--parallel", "fsdp"),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (killed / "step-000002").is_dir() and proc.poll() is None:
        time.sleep(0.01)
    for pid in children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "step-000008").exists(), "the run ended before it could be killed"
    subprocess.run(torchrun(killed, "--resume", str(killed)), check=True, env=ENV,
                   capture_output=True)
    a, b = load_file(two / "step-000008" / "model.safetensors"), \
        load_file(killed / "step-000008" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows(killed, "loss")[-4:] == rows(two, "loss")[-4:]


def test_optimizer_state_by_parameter_name_and_from_older_checkpoints():
    """Checkpoints keep the optimizer state keyed by parameter name (any mode, any number
    of processes); a checkpoint written before FSDP (keyed by index) still resumes."""
    from photon.training import parallel

    torch.manual_seed(0)
    model = photon.build_model("photon-tiny")
    ids = torch.randint(0, 256, (2, 32))

    def stepped() -> torch.optim.AdamW:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return optimizer

    optimizer = stepped()
    by_name = parallel.optimizer_state(model, optimizer)
    assert "enc_embed.weight" in by_name["state"]
    for saved in (by_name, optimizer.state_dict()):
        fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
        parallel.load_optimizer_state(model, fresh, saved)
        a, b = fresh.state_dict()["state"], optimizer.state_dict()["state"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
