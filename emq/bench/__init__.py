"""Benchmarks: candidates + ground truth + model factory + batch + trivial predictors, one module each.

Importing the package imports every benchmark module, which registers itself in
`emq.bench.registry` (the registry never imports the modules: no import circle).
"""
from emq.bench import mq_bench101, mq_digits, nb201, vit_bench101, vit_digits  # noqa: F401
