"""The worker supervisor's restart policy: backoff on fast crashes, then give up."""

from __future__ import annotations

from pushsvc.server import FAST_CRASH_SECONDS, MAX_FAST_CRASHES, RestartPolicy


def test_a_worker_that_ran_for_a_while_is_restarted_at_once() -> None:
    policy = RestartPolicy()
    assert policy.on_exit(FAST_CRASH_SECONDS + 1) == 0.0
    assert policy.on_exit(3600) == 0.0


def test_fast_crashes_back_off_exponentially_then_give_up() -> None:
    policy = RestartPolicy()
    delays = [policy.on_exit(0.2) for _ in range(MAX_FAST_CRASHES)]
    assert delays[:-1] == [0.5, 1.0, 2.0, 4.0][: MAX_FAST_CRASHES - 1]
    assert delays[-1] is None


def test_a_long_run_between_crashes_resets_the_backoff() -> None:
    policy = RestartPolicy()
    policy.on_exit(0.1)
    policy.on_exit(0.1)
    assert policy.on_exit(FAST_CRASH_SECONDS * 2) == 0.0
    assert policy.on_exit(0.1) == 0.5
