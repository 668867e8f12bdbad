"""AReaL's staleness-bounded admission (algorithms.md §4b; areal/infra/staleness_manager.py),
torch-free.

    capacity = min( max_concurrent − running ,  (η + v + 1)·B − (accepted + running) )

A new prompt group is submitted only while capacity > 0. v is the policy version (the
trainer's steps so far), B the groups one step consumes, accepted the groups finished
and accepted so far (consumed ones included), running those in flight. Equivalently a
group is admitted iff ⌊(N_r − 1)/B⌋ ≤ v + η with N_r the groups generated or in flight,
so no trained group started more than η versions before the weights it is trained
against: η = 0 is the synchronous algorithm, η = 1 one step of overlap.

The unit is a prompt group (AReaL's is a trajectory: its consumer batch counts
trajectories; here a step trains B groups of n samples, so the group is what one admits
and consumes), or more exactly an admission slot, one per prompt asked of the sampler:
the async recipe counts a prompt a CurES plan pruned as a slot of the plan's last group,
which carries its rollout budget (engine.recipes.asynchronous). A group rejected by a filter (DAPO's) leaves running without counting as
accepted. An accepted group found too stale when the trainer takes its batch (a fork
under a smaller η) is dropped: it leaves accepted, so the bound admits a fresh one. After a resume, accepted = v·B + the groups restored to the buffer and
running = those restored in flight: with both empty (AReaL discards them), exactly the
paper's accepted = v·B, so capacity does not burst. A step that took a group carrying
pruned slots past its B consumed a few more than B; `surplus` counts those, and the
resume adds them back (accepted = v·B + surplus + the buffer), so the counters are the
saved ones.
"""

from dataclasses import dataclass


@dataclass
class StalenessManager:
    batch: int  # B: groups one training step consumes
    max_staleness: int  # η
    max_concurrent: int | None = None  # groups in flight at most; None = only η bounds them
    accepted: int = 0
    running: int = 0
    rejected: int = 0
    dropped: int = 0
    surplus: int = 0  # slots the trained steps took beyond B each, all steps together

    def capacity(self, version: int) -> int:
        """Groups that may be submitted now, at policy version `version`."""
        bound = (self.max_staleness + version + 1) * self.batch - (self.accepted + self.running)
        if self.max_concurrent is not None:
            bound = min(bound, self.max_concurrent - self.running)
        return max(0, bound)

    def submitted(self, groups: int) -> None:
        self.running += groups

    def accept(self, groups: int = 1) -> None:
        self.running -= groups
        self.accepted += groups

    def reject(self, groups: int = 1) -> None:
        self.running -= groups
        self.rejected += groups

    def drop(self, groups: int = 1) -> None:
        self.accepted -= groups
        self.dropped += groups

    def trained(self, groups: int) -> None:
        """A step took `groups` accepted ones to train (B, or a few more: module docstring)."""
        self.surplus += groups - self.batch

    def restore(self, version: int, buffered: int, in_flight: int, surplus: int) -> None:
        """The counters after a resume at `version` with `buffered` accepted groups not
        yet trained, `in_flight` groups resubmitted and the saved `surplus` (module docstring)."""
        self.surplus = surplus
        self.accepted = version * self.batch + surplus + buffered
        self.running = in_flight

    def state_dict(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "running": self.running,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "surplus": self.surplus,
        }
