"""Operations: the health probe behind ``graph-runs status`` and the asset checks, and drift.

``drift`` finds where the schedules database and Dagster disagree; ``drift_repair`` mends what
can be mended, each with an audit entry.
"""
