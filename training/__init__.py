"""convserve training stage: datasets, models, engine, checkpoints and run records."""
