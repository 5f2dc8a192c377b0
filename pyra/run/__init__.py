"""Running things: training, metrics, speed, prediction, one run, comparisons, run folders on disk."""
