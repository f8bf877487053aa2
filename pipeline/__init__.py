"""rankcal: RankMixup-trained, calibrated image classifiers."""

__version__ = "0.1.0"
