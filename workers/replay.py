"""Resume: replay from the ingest's history what a reconnecting client missed, then let live events
follow, with no gap and no duplicate at the seam.

A connection resumes once. Its live events are held from the first subscribe carrying ``resume``
(``more`` says further subscriptions follow) until the replay, fetched page by page for all of the
connection's subscriptions at the last one, has been sent; events at or below the resume point, or
covered by the replay, are never sent again (the connection's ``floor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from core.filters import SubscriptionFilters
from core.protocol import RequestId, Resume, encode_message, now_ms
from core.queries import HistoryAnswer, QueryFailure, decode_history, encode_history_query
from workers.session import ClientSession

if TYPE_CHECKING:
    from workers.hub import Hub


@dataclass(slots=True)
class ReplayJob:
    client: ClientSession
    filters: list[SubscriptionFilters]  # the connection's subscriptions when it asked to resume
    start: int  # the last seq the client had
    upto: int  # the newest seq this worker had delivered when it asked: live events follow
    request_id: RequestId
    done_to: int
    replayed: int = 0


class Replays:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.jobs: dict[bytes, ReplayJob] = {}  # by the id of their pending history query
        self.waiting: list[tuple[ClientSession, Resume, RequestId]] = []  # until the epoch is known

    def request(self, client: ClientSession, resume: Resume, request_id: RequestId) -> None:
        """A subscribe carried ``resume``: hold live events, and replay once the last one is in."""
        if client.resumed:
            # Only a notice: held events belong to the replay already under way, which releases them.
            data = {"reason": "this connection has already resumed", "epoch": self.hub.order.epoch}
            client.send(encode_message("resume_failed", data, now_ms(), request_id))
            return
        client.hold()
        if resume.more:
            return  # more subscriptions follow; the last one's resume replays for all of them
        client.resumed = True
        self._start(client, resume, request_id)

    def start_waiting(self) -> None:
        """The worker has heard the bus: resumes that came before it can start."""
        waiting, self.waiting = self.waiting, []
        for client, resume, request_id in waiting:
            if not client.closed:
                self._start(client, resume, request_id)

    def fail_all(self, reason: str) -> None:
        stale, self.jobs = self.jobs, {}
        for job in stale.values():
            self._fail(job.client, reason, job.request_id)

    def answer(self, frames: list[bytes]) -> bool:
        """Take a history answer if it is one of ours."""
        job = self.jobs.pop(frames[0], None)
        if job is None:
            return False
        self._on_history(job, decode_history(frames[1:]))
        return True

    def _start(self, client: ClientSession, resume: Resume, request_id: RequestId) -> None:
        order = self.hub.order
        if order.epoch is None:  # this worker has not heard the bus yet: wait for its beat
            self.waiting.append((client, resume, request_id))
            return
        if resume.epoch != order.epoch:
            self._fail(
                client, f"epoch {resume.epoch} has ended; the current epoch is {order.epoch}", request_id
            )
            return
        client.floor = resume.seq
        index = self.hub.index
        snapshot = [f for key in client.subscription_keys if (f := index.filters_of(key)) is not None]
        self._fetch(ReplayJob(client, snapshot, resume.seq, order.last, request_id, resume.seq))

    def _fetch(self, job: ReplayJob) -> None:
        if job.done_to >= job.upto:
            self._finish(job)
            return
        hub = self.hub
        query_id = b"resume-%d" % next(hub._query_ids)
        self.jobs[query_id] = job
        try:
            hub.queries.send_multipart(
                (query_id, encode_history_query(job.done_to + 1, job.upto)), zmq.NOBLOCK
            )
        except zmq.ZMQError:
            pass  # the timeout below answers the client
        hub.loop.call_later(hub.settings.query_timeout, self._timed_out, query_id)
        hub.loop.call_soon(hub._on_answers)

    def _timed_out(self, query_id: bytes) -> None:
        job = self.jobs.pop(query_id, None)
        if job is not None:
            self._fail(job.client, "history did not answer in time", job.request_id)

    def _on_history(self, job: ReplayJob, answer: HistoryAnswer | QueryFailure) -> None:
        client = job.client
        if client.closed:
            return
        if isinstance(answer, QueryFailure):
            self._fail(client, answer.message, job.request_id)
            return
        if not answer.complete:
            reason = f"history no longer holds seq {job.done_to + 1} (the oldest kept is {answer.oldest})"
            self._fail(client, reason, job.request_id)
            return
        for header, payload in answer.events:
            if header.seq > job.done_to and any(f.matches(header) for f in job.filters):
                client.send(payload)
                job.replayed += 1
        job.done_to = max([job.done_to, *(h.seq for h, _ in answer.events)])
        if not answer.events:
            job.done_to = job.upto  # nothing more to read
        self._fetch(job)

    def _finish(self, job: ReplayJob) -> None:
        data = {
            "epoch": self.hub.order.epoch,
            "fromSeq": job.start + 1,
            "toSeq": job.upto,
            "replayed": job.replayed,
        }
        job.client.send(encode_message("resumed", data, now_ms(), job.request_id))
        # Held since the first of several restored subscriptions: skip those the replay covered.
        job.client.floor = max(job.client.floor, job.upto)
        job.client.release()

    def _fail(self, client: ClientSession, reason: str, request_id: RequestId) -> None:
        data = {"reason": reason, "epoch": self.hub.order.epoch}
        client.send(encode_message("resume_failed", data, now_ms(), request_id))
        client.release()
