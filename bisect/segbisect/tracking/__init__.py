"""The MLflow store a session tracks into: where it is, whether it takes runs, MLflow's own log lines, and the
switch that turns the stages' tracking off when the store fails mid-bisection. MLflow is imported only to use a store.
"""
