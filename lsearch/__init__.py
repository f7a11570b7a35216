"""lsearch: hyperparameter search for label smoothing, as an Optuna study."""

__version__ = "0.1.0"
