"""The store: tables, engines and migrations glue, and the state machine of a slot's status.

Everything above it reads and writes the schedules database through these modules; the store
itself knows no rule of scheduling, dispatch or money.
"""
