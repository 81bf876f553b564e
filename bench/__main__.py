"""``python -m bench``: run the benchmarks, print the table, write the JSON (see bench/run.py)."""

from bench.run import main

raise SystemExit(main())
