"""What every stage entry point shares: argv, params loading, one-line errors, exit codes."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from components.config import PARAMS_FILE, ConfigError, load_stage


def run_stage(stage: str, body: Callable[[dict, str | None], None], item: str | None = None,
              choices: Sequence[str] = (), argv: Sequence[str] | None = None) -> None:
    """Parse argv, load this stage's params, run `body(config, item)`.

    Bad params exit 2 and bad data exit 1, each with one line naming the problem; set
    LMFORGE_DEBUG=1 for the traceback.
    """
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{stage}")
    if item:
        parser.add_argument(f"--{item}", required=True, choices=list(choices))
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        config = load_stage(stage, args.params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        body(config, getattr(args, item) if item else None)
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
        if os.environ.get("LMFORGE_DEBUG"):
            raise
        print(f"error: {stage}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
