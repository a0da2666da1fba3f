"""Faust stream workers: thin shells that feed topic records into the pure ESS core and write
its output (trip commands, dead letters) back to topics. Detection agents live here."""
