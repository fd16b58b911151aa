"""How cheap and how quick :meth:`seedflow.client.Client.wait` is, next to fixed-interval polling.

Runs the same batch of jobs on the local emulator (queued behind a few slots, random
processing times) three times: with seedflow's adaptive ``PollPolicy``, with a fixed 0.25 s
interval (quick but expensive) and with a fixed 2 s interval (cheap but slow). For each it
measures the API requests per job (status + result) and how long after a job completed its
``wait`` returned.

    python bench/polling.py [--jobs 32] [--slots 8]

Prints both numbers per policy and the ratios of the adaptive policy to each fixed one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio

from seedflow.client import Client, PollPolicy
from seedflow.emulator import EmulatorConfig, serve

MODEL = "bytedance/seedream-4-0/sequential"


def fixed(interval: float) -> PollPolicy:
    """Polling every ``interval`` seconds whatever the job's state."""
    return PollPolicy(
        first_delay=interval,
        growth=1.0,
        running_interval=interval,
        queue_interval=interval,
        per_queue_position=0.0,
    )


async def measure(policy: PollPolicy, jobs: int, slots: int) -> tuple[float, float, float]:
    """(requests per job, mean notice delay, p95 notice delay) for one batch."""
    config = EmulatorConfig(
        queue_time=(0.0, 0.2), processing_time=(0.5, 3.0), concurrency=slots, seed=7
    )
    with serve(config) as emu:
        noticed: dict[str, float] = {}
        async with Client(
            "bench", base_url=emu.base_url, poll=policy, max_requests_per_second=float("inf")
        ) as client:
            ids = [
                (await client.submit(MODEL, {"text": f"Generate 1 images of fox {i}",
                                             "sequential_image_generation_options": 1})).request_id
                for i in range(jobs)
            ]  # fmt: skip
            calls_before = emu.stats.status_calls + emu.stats.result_calls

            async def one(request_id: str) -> None:
                await client.wait(request_id)
                noticed[request_id] = time.time()

            async with anyio.create_task_group() as tg:
                for request_id in ids:
                    tg.start_soon(one, request_id)
        calls = emu.stats.status_calls + emu.stats.result_calls - calls_before
        delays = sorted(noticed[r] - (emu.requests[r].completed or 0.0) for r in ids)
    p95 = delays[min(len(delays) - 1, int(0.95 * len(delays)))]
    return calls / jobs, statistics.fmean(delays), p95


async def main(jobs: int, slots: int) -> None:
    policies = {
        "adaptive": PollPolicy(),
        "fixed 0.25 s": fixed(0.25),
        "fixed 2 s": fixed(2.0),
    }
    results = {name: await measure(policy, jobs, slots) for name, policy in policies.items()}
    print(f"{jobs} jobs on {slots} slots, processing 0.5-3 s each")
    print(f"{'policy':<14}{'requests/job':>14}{'notice mean':>14}{'notice p95':>13}")
    for name, (per_job, mean, p95) in results.items():
        print(f"{name:<14}{per_job:>14.1f}{mean:>13.2f}s{p95:>12.2f}s")
    ours = results["adaptive"]
    quick, cheap = results["fixed 0.25 s"], results["fixed 2 s"]
    print(f"adaptive vs fixed 0.25 s: {quick[0] / ours[0]:.2f}x fewer requests, "
          f"notices {ours[1] / max(quick[1], 1e-9):.2f}x later")  # fmt: skip
    print(f"adaptive vs fixed 2 s:    {ours[0] / cheap[0]:.2f}x the requests, "
          f"notices {cheap[1] / max(ours[1], 1e-9):.2f}x sooner")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.slots)
