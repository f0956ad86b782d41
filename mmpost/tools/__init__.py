"""Offline tools around training runs: checkpoint merging and surgery (``weights``), the HTML report and
model card (``report``), the environment check (``doctor``) and the benchmarks against peers
(``bench/``: TRL, simulators, the MRC reward, the sandbox)."""
