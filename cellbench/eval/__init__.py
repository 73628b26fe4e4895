"""Evaluation: metrics, colour statistics, realism, profiling (the WBC classifier: :mod:`cellbench.nets.classifier`)."""
