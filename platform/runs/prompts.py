"""A run's per-prompt telemetry: its difficulty store (the latest record of each prompt)
the sampled responses kept for drill-down (step → prompt → samples) and the text and
reference answer of each prompt sampled.

Written only by runs.telemetry.record_events, inside its transaction and under its fence: a
superseded attempt's batch and a re-sent batch never get here, so what is stored here
is the current attempt's, once. What a resumed attempt reports again replaces the earlier
report: the latest difficulty record of a prompt wins, and a step's sample set is
replaced whole. Reads are in runs.selectors.
"""

from collections.abc import Sequence

from django.conf import settings

from catalog import services as catalog
from engine.events import DifficultyUpdates, Event, PromptDifficulty, SampleRecords
from runs.models import Run, RunPrompt, RunPromptDifficulty, RunSample

# Event kinds stored in their own tables here instead of as RunEvent rows.
STORED_APART = frozenset({"difficulty", "samples"})

# A row is the event's PromptDifficulty as it is, and the step and time that reported it.
_DIFFICULTY_FIELDS = [*(name for name in PromptDifficulty.model_fields if name != "prompt_id"), "step", "wall_time"]


def record_prompt_events(run: Run, events: Sequence[Event]) -> None:
    """Store the batch's `difficulty` and `samples` events, and feed the difficulty
    records into the catalog's per-prompt records when the run trained on a catalog
    dataset. Call it inside record_events' transaction, after its fence."""
    updates = [event for event in events if isinstance(event, DifficultyUpdates)]
    samples = [event for event in events if isinstance(event, SampleRecords)]
    if updates:
        _record_difficulty(run, updates)
        catalog.record_prompt_difficulty(run.pk, updates)
    if samples:
        _record_samples(run, samples)


def _record_difficulty(run: Run, updates: Sequence[DifficultyUpdates]) -> None:
    latest: dict[str, RunPromptDifficulty] = {}  # one upsert per prompt: the batch's last wins
    for event in updates:
        for prompt in event.prompts:
            prompt_id = storable(prompt.prompt_id)
            latest[prompt_id] = RunPromptDifficulty(
                run=run, **{**prompt.model_dump(), "prompt_id": prompt_id}, step=event.step, wall_time=event.wall_time
            )
    RunPromptDifficulty.objects.bulk_create(
        latest.values(),
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["run", "prompt_id"],
        update_fields=_DIFFICULTY_FIELDS,
    )


def _record_samples(run: Run, events: Sequence[SampleRecords]) -> None:
    """Replace the sample set of each (step, split) the batch reports, store the prompts
    not seen before, then drop the steps that fell out of the retention window
    (settings.ROLLYARD_SAMPLE_STEPS_KEPT)."""
    sets = {(event.step, event.split): event for event in events}  # a step reported twice: the last wins
    # One row per prompt, not per sample; a prompt already stored keeps its row (its id
    # names its text: a hash of it, or the dataset's id column), so a repeat is an index probe.
    prompts = {prompt.prompt_id: prompt for event in events for prompt in event.prompts}
    RunPrompt.objects.bulk_create(
        (
            RunPrompt(run=run, prompt_id=storable(prompt.prompt_id), prompt=storable(prompt.prompt), answer=storable(prompt.answer))
            for prompt in prompts.values()
        ),
        batch_size=500,
        ignore_conflicts=True,
    )
    for step, split in sets:
        RunSample.objects.filter(run=run, step=step, split=split).delete()
    RunSample.objects.bulk_create(
        (
            RunSample(
                run=run,
                step=event.step,
                split=event.split,
                position=position,
                wall_time=event.wall_time,
                **sample.model_dump(exclude={"prompt_id", "response"}),
                prompt_id=storable(sample.prompt_id),
                response=storable(sample.response),
            )
            for event in sets.values()
            for position, sample in enumerate(event.samples)
        ),
        batch_size=500,
    )
    # Keep the newest K steps: those above (newest step reported) − K. A run resumed from
    # an earlier checkpoint reports lower steps; it only ever deletes older ones.
    newest = max(step for step, _ in sets)
    RunSample.objects.filter(run=run, step__lte=newest - settings.ROLLYARD_SAMPLE_STEPS_KEPT).delete()


def storable(text: str) -> str:
    """`text` as PostgreSQL can store it: a model may decode a NUL character, which a
    text column refuses; it becomes U+FFFD (the replacement character) rather than
    failing the whole batch."""
    return text.replace("\x00", "\ufffd")
