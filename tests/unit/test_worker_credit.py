"""A worker returns the credit of the frames it finished in one Credit per frame only when nothing else waits; while
frames wait it returns them in Credits of up to CREDIT_BATCH frames (a message a frame less on both sides), and
whatever it held back goes out as soon as nothing waits."""

from __future__ import annotations

from ringstream.protocol import Credit
from ringstream.workers.process import CREDIT_BATCH, _Worker


def test_credit_is_held_back_only_while_frames_wait():
    w = _Worker(None, 3)
    w.frames, w.pid = "frames-socket", 1234
    sent = []
    w.send = lambda sock, msg, buffers=(): sent.append((sock, msg))
    for _ in range(CREDIT_BATCH + 1):
        w.give_credit(1, waiting=True)
    assert [m.n for _, m in sent] == [CREDIT_BATCH] and w.unreturned == 1
    w.give_credit(1, waiting=False)  # nothing waits: everything held back goes out
    w.give_credit(1)
    assert sent[1:] == [("frames-socket", Credit(worker=3, pid=1234, n=2)), ("frames-socket", Credit(worker=3, pid=1234, n=1))]
    w.give_credit(1, waiting=True)
    w.give_credit(0)  # (what the loop does when it finds nothing to do)
    assert [m.n for _, m in sent] == [CREDIT_BATCH, 2, 1, 1] and w.unreturned == 0
