"""The enrichment stages between the parsers and the store, built once from the configuration.

Each stage is a batch hook run inside `write_batch`'s transaction, so derived rows commit or
roll back with their events. Order matters: reputation scores the addresses first; error
classification and correlation open and extend traces; the kernel-context linker (added by the
daemon, which owns the tracer) goes last, to attach process and connection rows to the trace an
event already has. The first three run before the batch's events are inserted, so that each
event goes in with its trace (see `write_batch`); the linker runs after.
"""

from __future__ import annotations

from typing import Any

from logly.store.sqlite import BatchHook


def build_hooks(config: Any) -> list[BatchHook]:
    """The hooks `logly ingest` and `logly daemon` both run, as [reputation] and
    [correlation] in the config ask."""
    from logly.tracer import correlate, reputation

    hooks: list[BatchHook] = []
    rep = reputation.make_hook(config)
    if rep is not None:
        hooks.append(rep)
    hooks += correlate.make_hooks(config)
    return hooks
