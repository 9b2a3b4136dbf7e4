"""Training and evaluation loops, meters and distributed helpers."""
