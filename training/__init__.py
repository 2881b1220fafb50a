"""Reading data, snapshots and labels, fitting, backtests, MLflow runs, compare/promote, the simulator."""
