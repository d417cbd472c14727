"""How a step is measured: its time, round-robin with the others, and its peak memory."""

import collections
import time
import tracemalloc
import typing as tp

import numpy

# A case ends its timing after this many rounds once it has used up its time.
MIN_REPEATS = 5


def synchronizer(device):
    """A function that waits for the work queued on ``device``: CuPy's stream, or nothing."""
    if device.xp is numpy:
        return lambda: None
    import cupy

    def synchronize():
        cupy.cuda.get_current_stream().synchronize()
    return synchronize


def time_round_robin(steps, repeats: int, warmup: int, seconds: float, synchronize,
                     pause: float = 0.0, self_timed: bool = False):
    """Times each step ``repeats`` times, interleaved; returns seconds per step.

    Each round runs every step once, starting from a different one each round,
    so that drift on a busy machine affects them alike. Timing stops early once
    ``seconds`` of steps (pauses left out) have passed and :data:`MIN_REPEATS`
    rounds are done. With ``self_timed``, each step returns the seconds it
    took as it timed them itself (its work runs in another process, say). With
    ``pause``, each step waits that many seconds first, untimed: for steps
    whose threads stay busy after they return (onnxruntime's spin waiting for
    more work), so that one step's leftover does not slow the next.
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    synchronize()
    samples = collections.OrderedDict((name, []) for name in names)
    timed = 0.0
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            if pause:
                time.sleep(pause)
            synchronize()
            t0 = time.perf_counter()
            own_time = steps[name]()
            synchronize()
            samples[name].append(own_time if self_timed else time.perf_counter() - t0)
            timed += samples[name][-1]
        if i + 1 >= MIN_REPEATS and timed > seconds:
            break
    return samples


def peak_allocated_bytes(step) -> tp.Optional[int]:
    """The most memory that ``step()`` held at once, as ``tracemalloc`` sees it.

    NumPy reports its array buffers to ``tracemalloc``; CuPy's do not show.
    ``None`` if something else is already tracing.
    """
    if tracemalloc.is_tracing():
        return None
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
