"""grpclb's benchmark suite: each scenario against its baseline, in one run.

Run it with ``scripts/bench.sh`` (``python -m benchmarks``); it writes
``docs/benchmarks.md`` and the plots under ``docs/benchmarks/``. Not part of the
unit tests. Traffic goes only to pods on 127.0.0.x, and every loop is bounded.
"""

import os

# grpc core's informational logs (a GOAWAY whenever a pod stops) would drown the
# progress lines; set before grpc is imported, and inherited by the pod processes.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
