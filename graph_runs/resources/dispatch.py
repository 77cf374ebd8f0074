"""How slots are batched into dispatch runs and fired: sizes, bounds, lease, events."""

import datetime as dt

import dagster as dg

from graph_runs.dispatch.batches import DEFAULT_MAX_ATTEMPTS, Recovery
from graph_runs.dispatch.dispatcher import DispatchLimits
from graph_runs.settings import DispatchSettings

DEFAULTS = DispatchSettings()


class DispatchResource(dg.ConfigurableResource):
    """Operator-set dispatch bounds (see docs/how-a-slot-fires.md).

    ``slot_asset_events``: the slot events sensor announces each slot outcome as an asset
    event on its schedule's partition; on Dagster+ each is billed as a materialization, so
    it can be turned off.
    """

    batch_size: int = DEFAULTS.batch_size
    max_concurrent_calls: int = DEFAULTS.max_concurrent_calls
    max_calls_per_account: int = DEFAULTS.max_calls_per_account
    parallel_runs: int = DEFAULTS.parallel_runs
    account_batches: int = DEFAULTS.account_batches
    slot_asset_events: bool = DEFAULTS.slot_asset_events
    launch_allowance_seconds: int = DEFAULTS.launch_allowance_seconds
    lease_seconds: int = DEFAULTS.lease_seconds
    start_timeout_seconds: int = DEFAULTS.start_timeout_seconds
    hand_off_seconds: int = DEFAULTS.hand_off_seconds
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def limits(self) -> DispatchLimits:
        """The dispatch run's pacing."""
        return DispatchLimits(
            lease=dt.timedelta(seconds=self.lease_seconds),
            # Four beats per lease: a run survives three missed renewals.
            heartbeat_seconds=self.lease_seconds / 4,
            hand_off=dt.timedelta(seconds=self.hand_off_seconds),
        )

    def recovery(self) -> Recovery:
        """How long a batch's run may go unseen before the sensor dispatches it again."""
        return Recovery(
            lease=dt.timedelta(seconds=self.lease_seconds),
            start_timeout=dt.timedelta(seconds=self.start_timeout_seconds),
            max_attempts=self.max_attempts,
        )

    def lookahead(self, sensor_interval_seconds: int) -> dt.timedelta:
        """How far ahead slots are claimed, so that the run is up before the instant.

        A sensor interval plus the time a run takes to launch.
        """
        return dt.timedelta(seconds=sensor_interval_seconds + self.launch_allowance_seconds)
