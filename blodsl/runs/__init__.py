"""Runs of a program: the training loop of `blodsl run`, its run folder, and plots."""
