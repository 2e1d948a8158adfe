"""Print every shipped experiment's arm keys (stage folders, latent cache, generator key, arm key),
full and ``--quick``: a restructuring that must not change results is checked by diffing this
output before and after (``python bench/experiment_keys.py > before.txt``). Nothing is trained;
the store and output folders are a fixed relative path, so the keys do not depend on the machine.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from fae.config import to_dict
from fae.experiment.config import experiment_path, load_experiment, resolve_arms
from fae.experiment.plan import plan_arm
from fae.experiment.store import run_dir, stage_key

NAMES = ("latent-space", "encoder", "latent-channels", "time-shift", "starflow")


def main() -> int:
    os.chdir(tempfile.mkdtemp())  # relative folders below resolve to the same names everywhere
    root = Path("experiments")
    for name in NAMES:
        for quick in (False, True):
            path = experiment_path(name, None)
            exp, arm_overrides = load_experiment(path, quick, [])
            arms, base = resolve_arms(exp, path, quick, arm_overrides)
            for arm in arms:
                plan = plan_arm(arm, base, root / name, root / "_stages", exp.evaluation.steps_of(arm))
                stages = " ".join(f"{s}={run_dir(p).name}" for s, p in plan.stages.items())
                key = plan.key({**to_dict(exp.evaluation), "reference": "fixed"})
                print(f"{name}{' --quick' if quick else ''} {arm.name}: {stages} latents={plan.latents.name} "
                      f"generator={stage_key(plan.generator)} arm={key[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
