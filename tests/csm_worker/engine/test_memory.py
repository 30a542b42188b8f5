"""`--batch-size auto` (`csm_worker.engine.memory`): slots from free memory, per-slot caches and step temporaries."""

from __future__ import annotations

import logging

import torch

from csm_worker.engine import memory
from csm_worker.engine.memory import GIB, MAX_SLOTS, plan_slots


def test_slots_are_what_fits_after_the_reserve():
    mib = 2**20
    # 80 GiB free, 64 MiB of cache and 16 MiB of temporaries a slot: (80 - 2) GiB x 0.9 / 80 MiB = 898 -> cap.
    assert plan_slots(80 * GIB, 64 * mib, 16 * mib).slots == MAX_SLOTS
    b = plan_slots(24 * GIB, 64 * mib, 16 * mib)
    assert b.slots == int(22 * GIB * 0.9) // (80 * mib) == 253
    assert "253 slots" in b.describe() and "64.0 MiB KV cache" in b.describe()
    # Temporaries count: without them more slots would be promised than fit.
    assert plan_slots(24 * GIB, 64 * mib, 0).slots > b.slots
    # The prefix cache's limit is set aside before any slot: it fills with a cast's prompts as the job runs.
    with_prefix = plan_slots(24 * GIB, 64 * mib, 16 * mib, prefix_cache=8 * GIB)
    assert with_prefix.slots == int(14 * GIB * 0.9) // (80 * mib) == 161
    assert "8192.0 MiB prefix cache" in with_prefix.describe()
    # Less free than the reserve still gives one slot (the engine then fails loudly if even that does not fit).
    assert plan_slots(GIB, 64 * mib, 16 * mib).slots == 1


def test_a_slots_costs_follow_the_model_and_its_dtype(gen, bgen):
    m = gen.model
    b = bgen.model
    step = memory.step_bytes_per_slot(m)
    assert step > 0 and memory.step_bytes_per_slot(b) == step  # the backend does not change shapes
    caches = m.new_caches(1)
    assert m.cache_bytes_per_row() == sum(t.numel() * t.element_size() for pair in caches.values() for t in pair)


def test_auto_slots_reads_free_memory_and_logs_its_choice(gen, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="csm_worker.engine.memory")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6 * GIB, 8 * GIB))
    budget = memory.auto_slots(gen.model)
    per = gen.model.cache_bytes_per_row() + memory.step_bytes_per_slot(gen.model)
    prefix = memory.PREFIX_CACHE_BYTES  # what every engine's prefix cache may grow to
    assert budget.slots == min(MAX_SLOTS, int((4 * GIB - prefix) * 0.9) // per) and budget.prefix_cache == prefix
    assert f"--batch-size auto: {budget.slots} slots" in caplog.text
    assert gen.max_batch_size() == budget.slots and gen.slot_budget == budget
