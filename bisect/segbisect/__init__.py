"""segbisect: find the stage, then the minimal change, that makes a DVC pipeline's BAD configuration fail.

Modules, one job each: refs (resolve GOOD/BAD), snapshot (per-stage params/files/data via DVC's index),
units (diff into units and groups), hybrid (write a hybrid into a worktree), workspace (worktrees sharing the
DVC cache), runner (dvc repro + metrics), predicate (--fail-if), search (stage search + ddmin), evaluator
(fingerprints, reuse, parallel waves), journal (resume), report, tracking (MLflow), session (glue), cli.
Generic over any DVC project: it never imports the `pipeline` package.
"""
