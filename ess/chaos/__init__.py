"""Reliability and security campaigns: ESS under crashes, venue faults, broker loss, hostile
input and forged commands, each turned into repeatable figures.

Every campaign module exposes ``async def run_campaign(*, quick: bool, seed: int = 0) ->
dict[str, Any]`` (JSON-ready figures) and ``FAILURES``: the figure names that must be 0
(``final_state_matches_replay`` must be true). ``python -m ess.chaos`` (``make chaos``) runs
them all at full size and writes ``bench/results/chaos.json``; ``tests/chaos`` runs the
``quick`` versions inside ``make test``.
"""
