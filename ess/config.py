"""Deprecated: the settings moved to :mod:`ess.settings`; this re-export goes next release."""

from ess.settings import RETIRED_DIR, EssSettings  # noqa: F401
