"""Plain functions the ops call; tested without Dagster."""
