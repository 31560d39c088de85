"""core: what training is, with no I/O. Models (``models``, with ``eval_mode``), the feedback penalty
(``loss``), samplers and their registry (``sampling``), feedback masks per sample id (``feedback``), validation
written once (``checks``) and the one training loop (``loop``: ``train_round``; DDP wraps it through
``Parallel``). May import torch, numpy and ``label_config``; nothing else of the project.
"""
