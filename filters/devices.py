"""Where and in what precision the model steps run: GPU in bf16 when there is one, CPU in fp32 otherwise."""

from __future__ import annotations

import torch


def pick_device(device: str | None = None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def model_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32
