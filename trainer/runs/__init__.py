"""runs: what a run leaves on disk. The run directory (``run``: config, rounds, history), checkpoints and their
file names (``checkpoint``), the SQLite ledger of what was pushed, pulled and used (``ledger``), atomic writes
(``atomic``) and training across processes (``distributed``, a wrapper around ``core.loop.train_round``). May
import ``core``, ``explain``, ``data`` and ``label_config``; never Label Studio.
"""
