"""Thin Dagster ops: gather inputs, call a services/ function, report metadata."""
