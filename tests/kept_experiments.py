"""The experiment records the tests read: every kept run in docs/experiments, and a copy of a run
recorded before intervals existed (the encoder's of 2026-12-04), so the old rule stays tested once
every kept run has been re-run. Which rule a record was judged by: ``report.has_intervals``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1] / "docs" / "experiments"
KEPT = sorted(DOCS.glob("*/results.json"))
OLD_RULE_RUN = Path(__file__).with_name("fixtures") / "experiment_results" / "encoder_old_rule.json"


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
