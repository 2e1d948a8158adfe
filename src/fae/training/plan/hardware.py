"""The GPUs ``fae plan`` knows, and the model-FLOP utilisation it assumes on each.

Datasheet figures are dense bf16 tensor-core peaks (no sparsity) and the memory a process can use.
MFU (model FLOPs per second / datasheet peak) is read from ``measured/<kind>.json`` when a GPU check
(``bench/gpu_check.sh``) has been run on that kind and its JSON installed (``--install``), per
stage kind, with its date; otherwise the stated assumption :data:`ASSUMED_MFU` is used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ASSUMED_MFU = 0.40
MEASURED_DIR = Path(__file__).with_name("measured")
# which step of the GPU check stands for which stage
MEASURED_STEP = {"generator": "sit_xl1", "autoencoder": "fae_ia", "pixel-decoder": "pixel_decoder"}


@dataclass(frozen=True)
class GPU:
    kind: str
    name: str
    bf16_flops: float  # dense bf16 peak, FLOP/s (datasheet)
    memory: int  # bytes

    @property
    def usable_memory(self) -> int:
        """What ``fae plan`` lets a step use: 90% (allocator slack, CUDA context, NCCL buffers)."""
        return int(self.memory * 0.9)


GIB = 1024 ** 3
GPUS = {
    "h100-80gb": GPU("h100-80gb", "NVIDIA H100 SXM 80GB", 989e12, 80 * GIB),
    "h200": GPU("h200", "NVIDIA H200 SXM 141GB", 989e12, 141 * GIB),
    "a100-80gb": GPU("a100-80gb", "NVIDIA A100 SXM 80GB", 312e12, 80 * GIB),
}


@dataclass(frozen=True)
class Utilisation:
    mfu: float
    source: str  # "assumed" or "measured <date> by bench/gpu_check.sh (<step>)"


def utilisation(kind: str, stage: str) -> Utilisation:
    """The MFU of ``stage`` on GPU ``kind``: measured when ``measured/<kind>.json`` has it."""
    path = MEASURED_DIR / f"{kind}.json"
    step = MEASURED_STEP.get(stage)
    if step and path.is_file():
        record = json.loads(path.read_text())
        mfu = (record.get("steps", {}).get(step) or {}).get("mfu_datasheet")
        if isinstance(mfu, (int, float)) and mfu > 0:
            return Utilisation(float(mfu), f"measured {record.get('date', '?')} on {record.get('gpu', kind)} "
                                           f"by bench/gpu_check.sh ({step})")
    return Utilisation(ASSUMED_MFU, f"assumed {ASSUMED_MFU:.0%} (no bench/gpu_check.sh figures for {kind})")
