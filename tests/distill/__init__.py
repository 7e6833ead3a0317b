"""Tests of the ``distill`` package."""
