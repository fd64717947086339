"""What a bisection leaves for people: report.json/.md/.html, the terminal table, the live progress line and the
MLflow record of the bisection and its hybrids.
"""
