"""The in-process ESS API (see the package top level)."""
