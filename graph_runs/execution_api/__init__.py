"""The execution API, seen from graph-runs: its contract, our client, and a local server.

The client checks every answer against the contract and never lets a token reach a stored
text. The local server implements the same contract for development and tests. Nothing here
touches the schedules database, so dispatch can depend on it and not the other way round.
"""
