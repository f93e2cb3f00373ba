"""The throughput/latency benchmark of prefsync (``make bench``; see bench/run.py).

Not part of ``make test``: it starts its own redis-server, a fast fake Braze/Brevo
(bench/fake.py) and real worker processes, and writes bench/RESULTS.md.
"""
