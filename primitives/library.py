"""Imports every op module so that their decorators register the ops."""
