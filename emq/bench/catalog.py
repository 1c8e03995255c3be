"""Imports every benchmark module so that their factories are registered."""
