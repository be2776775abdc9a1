"""hfspec's benchmark harness: the ``hfspec`` command, not the library.

Nothing in ``hfspec`` proper imports this package. It is installed with hfspec so that
``pip install hfspec`` users can run ``hfspec bench --tiny`` or ``hfspec conformance --data DIR``
and get the same numbers as the repository, but it reads no repository paths: prompts and the
conformance tokenizer are package data, outputs default to folders under the current directory.

Modules: ``harness`` (the schedule, warm-up, identity checks and progress every benchmark shares),
``environment`` (machine, versions, load), ``markdown`` (result sections of BENCHMARKS.md),
``plots`` (matplotlib figures), and one module per benchmark: ``speed``, ``batch``, ``grammar``,
``conformance``; ``cli`` parses arguments.
"""
