"""Evaluation: the WBC classifier, metrics, colour statistics, realism, profiling."""
