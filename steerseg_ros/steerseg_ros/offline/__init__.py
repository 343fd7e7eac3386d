"""Offline work on recordings and datasets, with the same core the node runs: dataset readers,
the papers' protocol, evaluation and its metrics, soft-prompt training, bags and frame sources."""
