"""The event sink of a run's driver: engine events → database rows → live websocket groups.

Events are buffered and written in batches (one transaction, one channel-layer message per
batch) so a chatty run costs few round trips; `runs.telemetry.record_events` publishes each
batch only after its transaction commits, so a browser never sees an event the database
does not hold.

Every batch goes out for the driver's attempt, through its fence (workers.attempt): the
platform refuses the writes of an attempt that is no longer current, and the sink raises
engine.events.Superseded, which stops the engine before its next step or checkpoint.
Batches are numbered, so one re-sent after a lost database reply is stored once.
"""

import time
from collections.abc import Callable
from typing import TypeVar

from engine.events import Event
from workers.attempt import AttemptFence

T = TypeVar("T")


class DatabaseSink:
    """Batches a run's events. A batch is written when a step's events are complete (the
    engine's Heartbeat or Status event), when it grows to `max_batch`, or when
    `max_delay_s` has passed since the last write."""

    def __init__(self, fence: AttemptFence, max_batch: int = 500, max_delay_s: float = 0.5):
        self.fence = fence
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._buffer: list[Event] = []
        self._batches = 0  # batches stored so far; the next one is numbered one more
        self._last_write = time.monotonic()

    def emit(self, event: Event) -> None:
        self.fence.check()
        self._buffer.append(event)
        step_complete = event.kind in ("heartbeat", "status")
        overdue = time.monotonic() - self._last_write >= self.max_delay_s
        if step_complete or overdue or len(self._buffer) >= self.max_batch:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered. With nothing buffered it still asks the platform whether
        the attempt is current: the engine flushes right before each checkpoint, and a
        superseded driver must learn it there, before it writes into the run's folder."""
        from runs.telemetry import record_events

        batch = self._buffer
        number = self._batches + 1 if batch else None
        # Kept in the buffer until stored: a write that fails is retried with the same number.
        self.fence.call(record_events, self.fence.run_id, self.fence.attempt_id, batch, number)
        if batch:
            self._buffer, self._batches = [], self._batches + 1
        self._last_write = time.monotonic()

    def publish(self, action: Callable[[], T], event: Event) -> T:
        """`action()` (a checkpoint renamed into place), then the buffer with `event` (its
        Checkpoint) stored, in one transaction under the run's row lock while this attempt
        is current (the reconciler gives attempts up under the same lock), or Superseded.
        One transaction: a worker that dies right after leaves a folder the platform knows
        of, so the requeue's "resumes from step N" is the step it does resume from."""
        from runs.attempts import while_current
        from runs.telemetry import record_events

        batch, number = [*self._buffer, event], self._batches + 1

        def act_then_store() -> T:
            result = action()
            record_events(self.fence.run_id, self.fence.attempt_id, batch, number)
            return result

        result = self.fence.call(while_current, self.fence.run_id, self.fence.attempt_id, act_then_store)
        self._buffer, self._batches = [], number
        self._last_write = time.monotonic()
        return result
