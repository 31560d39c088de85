"""The labelling config room. Pure: no torch, no HTTP, no environment.

Owns the grid (``grid``: cell geometry in pixels and percent), the names every control, object and data key
goes by (``names``), the labelling config XML built for a dataset's classes (``config``), the one parsed view
of a project's own config (``controls``; ``interface`` is its successor for any team's config, on label-studio-sdk's
LabelInterface, with ``snippet`` for the feedback tools a team pastes in), and both directions of the geometry:
grid cells -> suggested regions (``config.suggestion_result``), Label Studio regions -> grid cells
(``rasterise``), and every image region kind <-> pixel masks (``regions``). It imports the standard library,
numpy, lxml, OpenCV and label-studio-sdk's pure parts; ``trainer`` and ``ls_backend`` import it, never the other
way round.
"""
