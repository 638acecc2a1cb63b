"""One module per pipeline stage. Each exposes ``run(records, cfg, stats) -> Iterator[dict]``
over record dicts; the decision for one record lives in a pure ``check(record, cfg)``.
Stages never open files or read the environment."""
