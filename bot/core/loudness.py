"""How loud decoded audio is: a silent voice note is refused before any model runs."""

from __future__ import annotations

import numpy as np

from bot.core.types import Pcm


def is_silent(audio: Pcm, threshold_dbfs: float = -55.0) -> bool:
    """True when even the loudest 30 ms window is below ``threshold_dbfs``."""
    if audio.samples.size == 0:
        return True
    window = max(1, int(audio.sample_rate * 0.03))
    x = audio.samples.astype(np.float64)
    usable = x.size - x.size % window
    if usable == 0:
        frames = x.reshape(1, -1)
    else:
        frames = x[:usable].reshape(-1, window)
    loudest = float(np.sqrt((frames**2).mean(axis=1)).max())
    return bool(20 * np.log10(max(loudest, 1e-12)) < threshold_dbfs)
