"""app: what a person runs. The ``hitl`` command line (``cli``, ``commands``), the demo, local services (Label
Studio server, the backend process), experiments, benchmarks and plots. May import every layer below; only
``cli`` discovers commands of ``ls_backend`` (through the ``hitl.commands`` entry point).
"""
