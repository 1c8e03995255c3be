"""Imports every benchmark module so that their factories are registered."""

from emq.bench import mq_bench101, mq_digits, nb201, vit_bench101, vit_digits  # noqa: F401,E402
