"""Metrics shared by tasks."""
