"""Downstream metrics and the comparison report."""
