"""Benchmarking code, in one place: ``adamkit bench`` (``command``, which only the CLI imports) and
the helpers it shares with the scripts in ``benchmarks/``: timing (``timing``), the peers' steps
(``peers``) and the memory-bandwidth limit (``stream``, with ``stream.cc``). Nothing in the
optimizers imports this package."""
