"""MLflow: tracking, lineage, model cards and the model registry."""
