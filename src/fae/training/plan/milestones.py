"""The paper's training lengths per stage (shared/PAPER.md), in images seen, for GPU-hour estimates."""
from __future__ import annotations

IMAGENET_TRAIN = 1_281_167  # ImageNet-1k training images (one epoch)


def paper_milestones(stage: str, kind: str | None = None) -> list[tuple[str, int]]:
    """(label, images seen) of each milestone the paper reports for this stage."""
    if stage == "autoencoder":
        return [("paper stage Ia: 1M iterations at batch 1024", 1_000_000 * 1024)]
    if stage == "pixel-decoder":
        return [("paper stage Ib / II: 1M iterations at batch 512", 1_000_000 * 512)]
    if stage != "generator":
        return []
    if kind == "mmdit":
        return [("paper text-to-image: 1M iterations at batch 256 (CC12M)", 1_000_000 * 256)]
    if kind == "flow":
        return [("paper STARFlow comparison: 400 ImageNet epochs", 400 * IMAGENET_TRAIN)]
    return [(f"paper: {epochs} ImageNet epochs", epochs * IMAGENET_TRAIN) for epochs in (64, 80, 800)]
