"""labelstudio: the I/O with a Label Studio server. The SDK client (``client``), pushing a round's tasks
(``push``), pulling annotations into the ledger (``pull``), the run's project link (``link``), the one simulated
annotator (``annotator``) and the loop (``loop``: ``hitl run`` and the backend's training round). May import
every layer below and ``label_config``.
"""
