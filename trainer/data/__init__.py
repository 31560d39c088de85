"""data: what the model is trained on. The built-in confounder benchmarks with their true masks
(``benchmarks``), user folders and CSVs (``files``), the one decode/resize/crop from image to tensor (``view``)
and the dataset registry (``registry``: ``load_dataset``). May import ``core`` and ``explain``; no Label Studio.
"""
