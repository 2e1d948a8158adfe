"""``python tests/toy_cli.py train toy ...``: the fae command line with the test-only toy stage
registered (subprocess tests: SIGKILL + resume, torchrun)."""
from __future__ import annotations

import sys

import toy_stage

if __name__ == "__main__":
    toy_stage.register()
    from fae.cli import main

    raise SystemExit(main(sys.argv[1:]))
