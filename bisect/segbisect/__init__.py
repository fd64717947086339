"""segbisect: find the stage, then the minimal change, that makes a DVC pipeline's BAD configuration fail.

Generic over any DVC project: it never imports the `pipeline` package. docs/architecture.md maps its modules.
"""
