"""Benchmarks, each printing ratios against the peer measured in the same run: ``trl`` (``mmpost bench``),
``env`` (``mmpost bench-env``), ``mrc`` (``mmpost bench-mrc``), ``sandbox`` (``mmpost bench-sandbox``)."""
