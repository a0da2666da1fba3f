"""The ``detect`` role: its settings, the ESS epoch it follows, its outputs and observation.

The pure detection engine is :mod:`ess.detection`; the Faust shell that runs it is
:mod:`streams`, started from here and only from here.
"""
