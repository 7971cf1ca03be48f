"""Tunables, one place. Environment variables AIORAY_<NAME> override defaults."""

from __future__ import annotations

import os


def env_float(name: str, default: float) -> float:
    """A tunable: the number in AIORAY_<name>, else ``default``."""
    return float(os.environ.get(f"AIORAY_{name}", default))


# Values at least this large go to the node's shared-memory store; smaller ones
# live in the owner's memory and travel inline inside messages (Ray: 100 KiB).
MAX_INLINE_BYTES = int(env_float("MAX_INLINE_BYTES", 100 * 1024))
# Tasks pushed to one leased worker before earlier ones finish (pipelining), at most.
MAX_TASKS_IN_FLIGHT_PER_WORKER = int(env_float("MAX_TASKS_IN_FLIGHT_PER_WORKER", 256))
# Below that, as many as the function's measured average time says take this long: the
# owner's core loop shares the GIL with the caller's threads, and can wait a whole
# switch interval (5 ms) for it while they run; its workers must not run dry meanwhile.
PIPELINE_QUEUE_S = env_float("PIPELINE_QUEUE_S", 0.01)
# Pipelining is used only for classes whose tasks run shorter than this on average.
PIPELINE_BELOW_S = env_float("PIPELINE_BELOW_S", 0.002)
# A caller thread submitting tasks or actor calls releases the GIL once every this
# many, so the core loop is not kept waiting a whole switch interval (CoreWorker.post_task).
# Measured: 64 and 128 alike, 256 6% slower, 16 21% slower (docs/architecture.md).
SUBMIT_YIELD_EVERY = max(1, int(env_float("SUBMIT_YIELD_EVERY", 128)))
# Lease requests outstanding per scheduling class.
MAX_PENDING_LEASES_PER_CLASS = int(env_float("MAX_PENDING_LEASES_PER_CLASS", 10))
# How long an owner keeps an idle lease before returning it to the raylet.
LEASE_LINGER_S = env_float("LEASE_LINGER_S", 0.01)
# A worker blocked in get lends its CPUs to the raylet (so nested tasks cannot
# deadlock) once the get has waited this long; shorter waits, such as a quick actor
# call, keep them, so no other task starts beside a worker about to resume
# (cpu_lending.py). Above an actor call's round trip even on a loaded machine,
# small beside a child task's run.
LEND_CPUS_AFTER_S = env_float("LEND_CPUS_AFTER_S", 0.05)
# Workers the raylet starts ahead of demand (capped by num_cpus).
PRESTART_WORKERS = int(env_float("PRESTART_WORKERS", 2))
# Seconds between a raylet's resource reports to the GCS while they change.
RESOURCE_REPORT_S = env_float("RESOURCE_REPORT_S", 0.05)
# How often the GCS pushes the resource changes it collected to every raylet.
RESOURCE_BROADCAST_S = env_float("RESOURCE_BROADCAST_S", 0.05)
# How often a process sends its user metrics (and a worker its task counts) to its
# raylet, which exports them (metrics_registry.py).
METRICS_REPORT_S = env_float("METRICS_REPORT_S", 1.0)
# Raylets heartbeat the GCS this often; a node silent for NODE_TIMEOUT_S is dead.
# The raylet's demand report (queued shapes, idleness) for the autoscaler: this long
# after the queue changes (a burst is one report), then this often while busy.
DEMAND_REPORT_DELAY_S = env_float("DEMAND_REPORT_DELAY_S", 0.05)
DEMAND_REPORT_S = env_float("DEMAND_REPORT_S", 1.0)
NODE_HEARTBEAT_S = env_float("NODE_HEARTBEAT_S", 1.0)
NODE_TIMEOUT_S = env_float("NODE_TIMEOUT_S", 10.0)
# A request for object store room that nothing under way can satisfy (no spill in
# flight, nothing spillable) waits this long for frees, then fails.
OBJECT_STORE_FULL_TIMEOUT_S = env_float("OBJECT_STORE_FULL_TIMEOUT_S", 1.0)
SESSION_ROOT = os.environ.get("AIORAY_SESSION_ROOT", "/tmp/aioray-sessions")
SHM_DIR = os.environ.get("AIORAY_SHM_DIR", "/dev/shm")
SHM_PREFIX = "aioray_"
DAEMON_START_TIMEOUT_S = env_float("DAEMON_START_TIMEOUT_S", 30.0)
# Bytes of task arguments an owner keeps to re-run tasks whose results are lost (Ray: 1 GiB).
MAX_LINEAGE_BYTES = int(env_float("MAX_LINEAGE_BYTES", 1024**3))
# How long a raylet, driver or worker keeps trying to reach a GCS that went away
# (e.g. killed and restarted) before giving up (Ray: gcs_rpc_server_reconnect_timeout_s).
GCS_RECONNECT_TIMEOUT_S = env_float("GCS_RECONNECT_TIMEOUT_S", 60.0)
# Connecting to a daemon (TCP connect and handshake) fails after this long.
CONNECT_TIMEOUT_S = env_float("CONNECT_TIMEOUT_S", 5.0)
# A peer that has not completed its handshake this long after connecting is dropped.
HANDSHAKE_TIMEOUT_S = env_float("HANDSHAKE_TIMEOUT_S", 10.0)
# Accepted connections that have not passed their handshake yet, at most, per process:
# more are closed at once (each costs a few KiB until its hello, see rpc).
MAX_PENDING_HANDSHAKES = int(env_float("MAX_PENDING_HANDSHAKES", 512))
# File descriptors a process keeps for itself (files, pipes, connections it opens):
# an accepted connection that would use one of the last FD_RESERVE (at most an eighth of
# the limit) is closed at once.
FD_RESERVE = int(env_float("FD_RESERVE", 128))
# Warnings a peer can cause (malformed frames, refused handshakes) are written at most
# PEER_LOG_BURST times per kind per PEER_LOG_WINDOW_S; a summary counts the rest.
PEER_LOG_BURST = int(env_float("PEER_LOG_BURST", 10))
PEER_LOG_WINDOW_S = env_float("PEER_LOG_WINDOW_S", 60.0)


def _spin_wait_s() -> float:
    """AIORAY_SPIN_WAIT_US in seconds: how long, at most, a thread about to sleep until a
    reply or a task comes polls for it first (rpc/spin_wait.py: waking a halted CPU costs
    ~30 µs a hop on this project's VMs); 0 never spins. Raises ValueError if malformed."""
    raw = os.environ.get("AIORAY_SPIN_WAIT_US", "200")
    try:
        us = float(raw)
    except ValueError:
        us = float("nan")
    if not 0.0 <= us <= 1e6:
        raise ValueError(
            f"AIORAY_SPIN_WAIT_US must be a number of microseconds in [0, 1000000] "
            f"(0: never spin before sleeping); got {raw!r}."
        )
    return us / 1e6


SPIN_WAIT_S = _spin_wait_s()


def memory_monitor_settings() -> tuple[float, float]:
    """(usage threshold as a fraction, refresh period in s) of the raylet's memory monitor.

    Ray's RAY_memory_usage_threshold and RAY_memory_monitor_refresh_ms, read from
    AIORAY_MEMORY_USAGE_THRESHOLD (default 0.95) and AIORAY_MEMORY_MONITOR_REFRESH_MS
    (default 250; 0 disables the monitor). Raises ValueError naming a bad variable.
    """
    raw = os.environ.get("AIORAY_MEMORY_USAGE_THRESHOLD", "0.95")
    try:
        threshold = float(raw)
    except ValueError:
        threshold = float("nan")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(
            f"AIORAY_MEMORY_USAGE_THRESHOLD must be a fraction of the node's memory in "
            f"(0, 1], e.g. 0.95; got {raw!r}."
        )
    raw = os.environ.get("AIORAY_MEMORY_MONITOR_REFRESH_MS", "250")
    try:
        refresh_ms = float(raw)
    except ValueError:
        refresh_ms = float("nan")
    if not refresh_ms >= 0.0:
        raise ValueError(
            f"AIORAY_MEMORY_MONITOR_REFRESH_MS must be a number of milliseconds >= 0 "
            f"(0 disables the memory monitor); got {raw!r}."
        )
    return threshold, refresh_ms / 1000.0


def _ray_env(name: str, default: float) -> float:
    """AIORAY_<NAME>, else Ray's RAY_<name> (its lower-case spelling), else ``default``."""
    raw = os.environ.get(f"AIORAY_{name}") or os.environ.get(f"RAY_{name.lower()}")
    return float(raw) if raw else default


# Task events (task_events.py, daemons/gcs/task_events.py), Ray's names and defaults:
# how often each process sends the state transitions it recorded to the GCS (0: none
# are recorded), how many it keeps meanwhile, and how many tasks the GCS keeps.
TASK_EVENTS_REPORT_INTERVAL_MS = _ray_env("TASK_EVENTS_REPORT_INTERVAL_MS", 1000)
TASK_EVENTS_MAX_BUFFER_SIZE = int(_ray_env("TASK_EVENTS_MAX_BUFFER_SIZE", 100_000))
TASK_EVENTS_MAX_NUM_TASK_IN_GCS = int(_ray_env("TASK_EVENTS_MAX_NUM_TASK_IN_GCS", 100_000))

# A pull of an object from another node that makes no progress this long (the source
# raylet does not answer) fails with ObjectFetchTimedOutError: Ray's
# fetch_fail_timeout_milliseconds (default 10 minutes), also a _system_config key.
FETCH_FAIL_TIMEOUT_S = _ray_env("FETCH_FAIL_TIMEOUT_MILLISECONDS", 600_000) / 1000

# Ray's RAY_allow_out_of_band_object_ref_serialization: an ObjectRef pickled outside
# aioray's serialization (plain pickle, cloudpickle) pins its object in that process for
# good (true, the default, as Ray), or raises OufOfBandObjectRefSerializationException.
ALLOW_OUT_OF_BAND_OBJECT_REF_SERIALIZATION = (
    os.environ.get("AIORAY_ALLOW_OUT_OF_BAND_OBJECT_REF_SERIALIZATION")
    or os.environ.get("RAY_allow_out_of_band_object_ref_serialization")  # noqa: SIM112 (Ray's)
    or "1"
).lower() in ("1", "true")

# Ray's _system_config keys that aioray passes to the daemons as environment variables.
SYSTEM_CONFIG_ENV = {
    "task_events_report_interval_ms": "AIORAY_TASK_EVENTS_REPORT_INTERVAL_MS",
    "task_events_max_buffer_size": "AIORAY_TASK_EVENTS_MAX_BUFFER_SIZE",
    "task_events_max_num_task_in_gcs": "AIORAY_TASK_EVENTS_MAX_NUM_TASK_IN_GCS",
    "fetch_fail_timeout_milliseconds": "AIORAY_FETCH_FAIL_TIMEOUT_MILLISECONDS",
}


def system_config_env(system_config: dict[str, object]) -> dict[str, str]:
    """Environment for the daemons from the ``_system_config`` keys in SYSTEM_CONFIG_ENV."""
    return {
        env: str(int(system_config[key]))  # type: ignore[call-overload]
        for key, env in SYSTEM_CONFIG_ENV.items()
        if key in system_config
    }
