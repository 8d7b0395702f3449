"""Progress bars: hidden when asked, and TQDM_DISABLE reaches every bar photon draws."""

import subprocess
import sys

import pytest

from photon.progress import progress_bar


def test_show_false_hides_and_show_true_draws(capsys):
    for _ in progress_bar(range(3), show=False):
        pass
    assert capsys.readouterr().err == ""
    for _ in progress_bar(range(3), desc="counting"):
        pass
    assert "counting" in capsys.readouterr().err


@pytest.mark.e2e
def test_tqdm_disable_hides_a_bar_that_would_show():
    # tqdm reads TQDM_* when the class is defined, so the check runs in a fresh interpreter.
    code = ("from photon.progress import progress_bar\n"
            "for _ in progress_bar(range(3), desc='x'): pass")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"TQDM_DISABLE": "1", "PATH": ""}, check=True)
    assert run.stderr == ""
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PATH": ""}, check=True)
    assert "x:" in shown.stderr
