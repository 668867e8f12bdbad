"""What a run's driver knows about its own attempt: whether it is still the run's
current one (the fence), and the heartbeat that keeps it so while steps run.

The reconciler gives an attempt up when the run's heartbeat is older than
ROLLYARD_HEARTBEAT_TIMEOUT_S. Heartbeats used to go out only between steps, so a step
longer than that (an evaluation, a slow GPU step) looked like a dead worker. The
heartbeat thread beats every ROLLYARD_HEARTBEAT_EVERY_S while the engine works; once the
platform says the attempt is no longer current, the fence is down and the driver's next
write or stop check raises engine.events.Superseded, so it stops without writing.

The database may go away for a while (a restart, a failover): a driver's writes wait it
out for as long as the reconciler would wait for its heartbeat. Past that, the attempt
is as good as lost: the fence goes down, the driver stops, and the reconciler requeues
the run once the database is back.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

from engine.events import Superseded

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors of a database that went away, after which Django's connection must be closed
# before another query can reconnect.
CONNECTION_LOST = (OperationalError, InterfaceError)


class AttemptFence:
    """Whether attempt `attempt_id` of run `run_id` may still write. Shared by the
    driver's thread (sink, stop checks) and its heartbeat thread."""

    def __init__(self, run_id: int, attempt_id: int, outage_s: float):
        self.run_id = run_id
        self.attempt_id = attempt_id
        self.outage_s = outage_s
        self._down = threading.Event()
        self.reason = ""

    @property
    def is_down(self) -> bool:
        return self._down.is_set()

    def bring_down(self, reason: str) -> None:
        if not self._down.is_set():
            self.reason = reason
            self._down.set()
            logger.warning("run %s: attempt #%s superseded: %s", self.run_id, self.attempt_id, reason)

    def check(self) -> None:
        """Raise Superseded once the fence is down."""
        if self._down.is_set():
            raise Superseded(self.reason)

    def call(self, write: Callable[..., T], *args: object) -> T:
        """Call `write(*args)`, a platform service of this attempt, through a database
        outage of up to `outage_s` (the connection is closed and the call retried, backing
        off up to 5 s). Raises Superseded, bringing the fence down, when the platform
        refuses the attempt (runs.attempts.AttemptSuperseded) or the outage lasts longer."""
        from runs.attempts import AttemptSuperseded

        self.check()
        deadline = time.monotonic() + self.outage_s
        delay = 0.2
        while True:
            try:
                return write(*args)
            except AttemptSuperseded as refused:
                self.bring_down(str(refused))
                raise Superseded(self.reason) from refused
            except CONNECTION_LOST as lost:
                connection.close()  # a broken connection is never reopened by itself
                if time.monotonic() + delay > deadline:
                    self.bring_down(f"database unreachable for over {self.outage_s:.0f} s: {lost}")
                    raise Superseded(self.reason) from lost
                logger.warning("run %s: database unreachable, retrying in %.1f s: %s", self.run_id, delay, lost)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)


class AttemptHeartbeat:
    """A daemon thread that calls runs.attempts.keep_attempt_alive every `every_s`
    seconds until stopped, and brings the fence down when the attempt is no longer
    current. A beat that fails (the database is away) is logged and tried again at the
    next one: missing a few is what the reconciler's timeout allows for."""

    def __init__(self, fence: AttemptFence, every_s: float):
        self.fence = fence
        self.every_s = every_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{fence.run_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=self.every_s + 30)

    def _beat(self) -> None:
        from runs.attempts import keep_attempt_alive

        try:
            while not self._stopping.wait(self.every_s) and not self.fence.is_down:
                try:
                    if not keep_attempt_alive(self.fence.attempt_id):
                        self.fence.bring_down("the reconciler gave this attempt up")
                except CONNECTION_LOST as lost:
                    connection.close()
                    logger.warning("run %s: heartbeat failed, the database is unreachable: %s", self.fence.run_id, lost)
        finally:
            connection.close()  # this thread's own connection
