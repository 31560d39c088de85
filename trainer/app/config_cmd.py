"""``hitl config``: print the labelling config (or only the snippet) that gives a team's project the feedback tools.

``--classes A B C`` prints Label Studio's image-classification template over those classes with the tools in it;
``--project-config FILE`` prints the team's own config (exported from Settings > Labeling Interface > Code) with
the tools inserted after its class image. ``--snippet`` prints only the tools, to paste by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from label_config.interface import parse_project_config
from label_config.snippet import TOOLS, feedback_snippet, merge_snippet, starter_config


def config_text(
    *,
    classes: list[str] | None = None,
    project_config: str | None = None,
    tool: str | list[str] = "rectangle",
    snippet_only: bool = False,
) -> str:
    """What ``hitl config`` prints; exactly one of ``classes`` and ``project_config`` (the XML). ValueError
    naming what is wrong with either."""
    if (classes is None) == (project_config is None):
        raise ValueError("give exactly one of --classes and --project-config")
    if project_config is not None:
        if snippet_only:
            return feedback_snippet(parse_project_config(project_config).image.name, tool=tool)
        return merge_snippet(project_config, tool=tool)
    return feedback_snippet("image", tool=tool) if snippet_only else starter_config(classes, tool=tool)


def _run(args: argparse.Namespace) -> int:
    xml = args.project_config.read_text(encoding="utf-8") if args.project_config is not None else None
    print(config_text(classes=args.classes, project_config=xml, tool=args.tool, snippet_only=args.snippet))
    return 0


def register(sub) -> None:
    p = sub.add_parser("config", help="print a labelling config with the feedback tools (or only the snippet)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--classes", nargs="+", metavar="CLASS", help="the project's classes, in order")
    source.add_argument("--project-config", type=Path, metavar="FILE", help="the project's config XML")
    p.add_argument(
        "--tool",
        choices=sorted(TOOLS),
        nargs="+",
        default=["rectangle"],
        help="the region tool, or several (e.g. polygon brush: one control each; default: rectangle)",
    )
    p.add_argument("--snippet", action="store_true", help="print only the snippet to paste after the Image")
    p.set_defaults(func=_run)
