"""Every Redis key the runner uses, in one place.

All keys start with the prefix (default ``{runner}``). A job's keys are
``<prefix>:<kind>:<job_id>``: the kind comes first and holds no colon, so the keys of two jobs
can never be the same name, whatever characters their ids hold. The braces make the prefix a
Redis Cluster hash tag, so every key of a deployment lives in one slot and Lua scripts may
touch several. The batch scripts (take, begin, commit, fail) build a job's key names from the
prefix themselves: a change to a job's key names here must be made in job_key
(runner/lua/lib.lua) too; tests cover each name.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GROUP", "Keys"]

#: The consumer group every worker reads through.
GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one deployment (one prefix)."""

    prefix: str

    @property
    def stream(self) -> str:
        """The jobs stream producers XADD to."""
        return f"{self.prefix}:jobs"

    @property
    def dead(self) -> str:
        """The dead-letter stream."""
        return f"{self.prefix}:dead"

    @property
    def events(self) -> str:
        """The capped stream of lifecycle events."""
        return f"{self.prefix}:events"

    @property
    def entries(self) -> str:
        """Hash from stream entry id to job id, for the entries still in the stream."""
        return f"{self.prefix}:entries"

    @property
    def counts(self) -> str:
        """Hash of totals: jobs submitted, completed, failed, dead, cancelled."""
        return f"{self.prefix}:counts"

    @property
    def workers(self) -> str:
        """Sorted set of live workers' liveness keys, scored by last-seen time."""
        return f"{self.prefix}:workers"

    def worker(self, name: str) -> str:
        """One worker's liveness record (hash with a TTL)."""
        return f"{self.prefix}:worker:{name}"

    def job(self, job_id: str) -> str:
        """A job's status hash: state, attempts, fencing token, worker, times, error."""
        return f"{self.prefix}:job:{job_id}"

    def result(self, job_id: str) -> str:
        """A job's result (JSON), kept for the result TTL."""
        return f"{self.prefix}:result:{job_id}"

    def checkpoint(self, job_id: str) -> str:
        """A running job's checkpoint hash."""
        return f"{self.prefix}:ckpt:{job_id}"

    def checkpoint_segments(self, job_id: str) -> str:
        """A running job's committed segments (a list of JSON documents)."""
        return f"{self.prefix}:segs:{job_id}"

    def audio(self, job_id: str) -> str:
        """Audio bytes uploaded by a producer without shared storage; deleted with the job."""
        return f"{self.prefix}:audio:{job_id}"

    def rate(self, client_id: str) -> str:
        """The rate limiter's sliding-window log for one client."""
        return f"{self.prefix}:rl:{client_id}"
