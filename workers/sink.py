"""The event sink of a run's driver: engine events → database rows → live websocket groups.

Events are buffered and written in batches (one transaction, one channel-layer message per
batch) so a chatty run costs few round trips; `runs.services.record_events` publishes each
batch only after its transaction commits, so a browser never sees an event the database
does not hold.
"""

import time

from engine.events import Event


class DatabaseSink:
    """Batches a run's events. A batch is written when a step's events are complete (the
    engine's Heartbeat or Status event), when it grows to `max_batch`, or when
    `max_delay_s` has passed since the last write."""

    def __init__(self, run_id: int, max_batch: int = 500, max_delay_s: float = 0.5):
        self.run_id = run_id
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._buffer: list[Event] = []
        self._last_write = time.monotonic()

    def emit(self, event: Event) -> None:
        self._buffer.append(event)
        step_complete = event.kind in ("heartbeat", "status")
        overdue = time.monotonic() - self._last_write >= self.max_delay_s
        if step_complete or overdue or len(self._buffer) >= self.max_batch:
            self.flush()

    def flush(self) -> None:
        from runs.services import record_events

        if self._buffer:
            batch, self._buffer = self._buffer, []
            record_events(self.run_id, batch)
        self._last_write = time.monotonic()
