"""Command forgery: hostile resets against the real command processor (quick campaign), and
the secret scanner on planted secrets."""

from __future__ import annotations

import logging

import pytest
from loguru import logger

from ess.chaos import forgery, tamper
from ess.core.signing import generate_private_key


def test_scanner_finds_every_spelling_of_a_planted_key_and_names_no_secret() -> None:
    key = generate_private_key()
    secrets = forgery.key_secrets("op", key)
    with forgery.LogCapture() as capture:
        for value in secrets.values():
            logger.bind(note=value).info("planted")
        logging.getLogger("third.party").warning("plain %s", secrets["op private key hex"])
        logger.info("nothing secret here")

    # Every spelling is found in lines that carry it (and the hits never quote the secret).
    planted = [f"note={value}" for value in secrets.values()]
    hits = forgery.scan_for_secrets(planted, secrets)
    assert {hit.split(" in line")[0] for hit in hits} == set(secrets)
    assert not any(value in hit for hit in hits for value in secrets.values())
    # ESS's redaction masks a PEM private key in a bound field, so the production rendering
    # of the PEM line is clean; the hex spelling from a third-party logger is not.
    assert "op private key hex" in " ".join(forgery.scan_for_secrets(capture.lines, secrets))
    with pytest.raises(ValueError, match="too short"):
        forgery.scan_for_secrets([], {"tiny": "abc"})


@pytest.mark.integration
async def test_quick_campaign_figures() -> None:
    figures = await forgery.run_campaign(quick=True, seed=0)

    assert {name: figures[name] for name in forgery.FAILURES} == dict.fromkeys(
        forgery.FAILURES, 0
    ), (figures["problems"], figures.get("tamper_problems"), figures.get("tamper_error"))
    assert figures["rejected"] == figures["attempts"] >= 40
    assert set(figures["by_kind"]) == set(forgery.KINDS)
    assert figures["final_reset_ok"] == 1
    assert figures["log_lines_scanned"] > 50
    assert figures["venue_calls"] > 0

    # The state tampering phase: every kind of attack played, and answered.
    assert "tamper_error" not in figures
    assert set(figures["tamper_attempts"]) == set(tamper.KINDS)
    assert all(figures["tamper_attempts"].values()), figures["tamper_attempts"]
    assert figures["tamper_attempts"]["squatted_ids"] == 20
    assert figures["tamper_effects"] == {}
    assert figures["tamper_rounds"] == 1
    # Per write to ess.state: three forged entries and garbage refused, the copy skipped,
    # and the processor's unauthorized_access trip acknowledging them.
    assert figures["tamper_foreign_records"] == 8
    assert figures["tamper_copies_skipped"] == 2
    assert figures["tamper_acknowledgements"] >= 2
    assert figures["tamper_state_gate_closed_after_s"] <= figures["tamper_state_bound_s"]
    assert figures["tamper_redis_gate_open_s"] <= figures["tamper_redis_bound_s"]
    assert figures["tamper_redis_foreign_writes_counted"] >= 1
