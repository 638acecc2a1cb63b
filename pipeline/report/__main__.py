"""``python -m pipeline.report RUN [RUN ...] [--out FILE]``: write a run's report.html."""

from pipeline.report import main

raise SystemExit(main())
