"""The one way photon draws a progress bar: tqdm's, which its TQDM_* environment settings
(TQDM_DISABLE=1, TQDM_MININTERVAL=...) still reach.

tqdm reads those settings as defaults, so a bar made with an explicit `disable=False` ignores
TQDM_DISABLE; `progress_bar` passes `disable` only to hide a bar.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable | None = None, *, show: bool | None = True,
                 **options: Any) -> tqdm:
    """A tqdm bar over `iterable` (or updated by hand): shown unless the environment says
    otherwise (`show=True`), hidden (`False`), or shown only on a terminal (`None`)."""
    if show is not True:
        options["disable"] = None if show is None else True
    return tqdm(iterable, **options)
