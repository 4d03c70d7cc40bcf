"""Training checkpoints (ADMP and FeatReg training), written so that an interruption never leaves a
half-written one: the state goes to a file beside the checkpoint, which is then renamed over it."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(state: dict, path: Path) -> None:
    staging = path.with_suffix(".tmp")
    torch.save(state, staging)
    os.replace(staging, path)
