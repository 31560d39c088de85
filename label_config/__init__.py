"""The labelling config room. Pure: no torch, no HTTP, no environment.

Owns the grid (``grid``: cell geometry in pixels and percent), the names every control, object and data key
goes by (``names``), the labelling config XML built for a dataset's classes (``config``), the one parsed view
of a project's own config (``controls``), and both directions of the geometry: grid cells -> suggested regions
(``config.suggestion_result``) and Label Studio regions -> grid cells (``rasterise``). It imports only the
standard library and numpy; ``trainer`` and ``ls_backend`` import it, never the other way round.
"""
