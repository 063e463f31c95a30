"""The exit codes a stage ends with, as DVC and the Prefect flow read them.

2: bad params or arguments; 1: bad data or a full disk; EXIT_TRANSIENT: a failure outside
the inputs, which the flow retries.
"""
from __future__ import annotations

EXIT_TRANSIENT = 75
"""sysexits' EX_TEMPFAIL: the failure is outside the inputs (a server away); a retry may pass."""
