"""What every stage entry point shares: argv, params loading, one-line errors, exit codes."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, Sequence

from components.params import PARAMS_FILE, ConfigError, load_params
from components.exit_codes import EXIT_TRANSIENT
from components.io import DiskFullError


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (exit 2), like every other bad-input error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


def run_stage(stage: str, body: Callable[[dict, str | None], None], item: str | None = None,
              choices: Sequence[str] = (), argv: Sequence[str] | None = None,
              listed: Callable[[Sequence[str]], Sequence[str]] | None = None) -> None:
    """Parse argv, read and check all of params.yaml once, run `body(config, item)` with this
    stage's sections of that one resolution.

    Bad params or arguments exit 2; bad data or a full disk exit 1; an unreachable MLflow
    server exits 75 (EX_TEMPFAIL: worth retrying, which the Prefect flow does and does not
    for 1 or 2); each with one line naming the problem; LMFORGE_DEBUG=1 for the traceback.
    Every stage checks the whole file (all sections, cross-section ranges), so a bad value
    fails the first stage `dvc repro` runs, not the one that reads it an hour later.
    `listed(objectives)`: the items params.yaml's `objectives` runs (a ConfigError for an
    unknown name in it); another item exits 2 (dvc.yaml never starts one, a person might).
    """
    parser = _OneLineParser(prog=f"python -m pipelines.{stage}")
    if item:
        # With `listed`, a bad item is checked after the params, so a bad list is what gets named.
        parser.add_argument(f"--{item}", required=True, choices=None if listed else list(choices))
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        config = params.for_stage(stage)
        if listed:
            _check_listed(args.params, params.objectives, item, getattr(args, item), choices, listed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        body(config, getattr(args, item) if item else None)
    except ConfigError as e:  # a stage that reads `objectives` checks the names against the specs
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (FileNotFoundError, ValueError, FloatingPointError, DiskFullError) as e:
        _fail(stage, str(e))
    except Exception as e:
        from components.registry.tracking import unreachable_server

        message = unreachable_server(e)
        if message is None:
            raise
        _fail(stage, message, EXIT_TRANSIENT)


def _check_listed(path: str, objectives: Sequence[str], item: str, value: str, choices: Sequence[str],
                  listed: Callable[[Sequence[str]], Sequence[str]]) -> None:
    runs = listed(objectives)  # checks the names first
    if value not in choices:
        raise ConfigError(f"--{item}: unknown {item} {value!r}; valid: {', '.join(choices)}")
    if value not in runs:
        raise ConfigError(f"{path}: {value!r} is not in 'objectives' ({', '.join(objectives)}); "
                          f"add it there to run this stage")


def _fail(stage: str, message: str, code: int = 1) -> NoReturn:
    if os.environ.get("LMFORGE_DEBUG"):
        raise
    print(f"error: {stage}: {message}", file=sys.stderr)
    raise SystemExit(code) from None
