"""The trainer, in layers; each subpackage imports only the ones listed before it (and ``label_config``):

1. ``core``: models, the penalty, samplers, feedback masks, validation, the one training loop.
2. ``explain``: saliency behind one call (captum methods, the DeepLIFT twin and its fast path), overlays, metrics.
3. ``data``: built-in confounder benchmarks, user folders and CSVs, the one model view, the dataset registry.
4. ``runs``: the run directory (config, checkpoints, history), the SQLite ledger, atomic writes, DDP.
5. ``labelstudio``: the SDK client, push, pull, the project link, the simulated annotator, the loop.
6. ``app``: the ``hitl`` command line, demo, local services, experiments, benchmarks, plots.

``ls_backend`` sits above all of them; nothing here imports it (``tests/test_layers.py`` checks the graph).
"""
