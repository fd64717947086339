"""The user's DVC project and its git repository: references resolved to commits, snapshots of each side's pipeline,
their differences as units, worktrees, and DVC itself (run under a driver, forked from a warm server).
"""
