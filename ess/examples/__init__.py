"""Runnable examples of the ESS API."""
