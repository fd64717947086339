"""The search and its records: what a unit of change, an attempt, a hybrid, an outcome and a verdict are; the
search over units (pure, no I/O) and the judge that turns attempts into outcomes. Imports nothing else of segbisect.
"""
