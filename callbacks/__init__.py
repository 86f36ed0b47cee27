"""Lightning callbacks, installed as ``ra3_lightning.callbacks`` (the folder sits at the repository top level)."""
