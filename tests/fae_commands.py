"""``python tests/fae_commands.py ARGV.json``: run several fae command lines (a JSON list of argv
lists) one after another in one process, so that one ``torchrun`` launch (one process-group
start-up) serves them all; exits with the first non-zero exit code."""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __name__ == "__main__":
    from fae import distributed as du
    from fae.cli import main

    with du.process_group():  # started once; every command finds it running and leaves it
        for argv in json.loads(Path(sys.argv[1]).read_text()):
            code = main(argv)
            if code:
                raise SystemExit(code)
