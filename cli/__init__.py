"""`lmforge`: the user-facing commands."""
