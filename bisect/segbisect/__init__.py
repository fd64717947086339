"""segbisect: find the stage, then the minimal change, that makes a DVC pipeline's BAD configuration fail.

Generic over any DVC project: it never imports the `pipeline` package. docs/architecture.md maps its modules.
"""

from __future__ import annotations


def main() -> None:
    """The `segbisect` console script: the DVC fork server starts before the command line is even imported, so that
    it imports DVC on another core meanwhile.
    """
    from segbisect.project import gateway

    gateway.start_early()
    from segbisect.cli import app

    app()
