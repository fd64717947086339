"""Where hybrids run: the `Executor` seam, the local worktree pool and the Ray cluster, and the table that
names them for `--executor`.
"""
