"""What a model is: estimators, calibration, baselines, the scoring bundle, bands and reasons (code only;
trained models live in MLflow)."""
