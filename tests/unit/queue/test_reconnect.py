"""What Celery does after losing its Redis connection goes through our client
(worker.queue.reconnect)."""

from __future__ import annotations


def test_a_redis_channel_whose_connection_is_gone_works_through_our_own_client():
    # What Celery does with a message of a lost connection (ack, put back, restore) goes
    # through the runtime's client, not a crash (worker.queue.reconnect).
    from types import SimpleNamespace

    from kombu.transport import redis as kombu_redis

    import worker.queue.app  # noqa: F401  (applies worker.queue.reconnect)
    from worker.delivery.runtime import runtime

    for detached in (SimpleNamespace(connection=None), SimpleNamespace(connection=object())):
        with kombu_redis.Channel.conn_or_acquire(detached) as client:
            assert client is runtime().redis


def test_a_pool_process_that_exited_is_not_watched_again_after_a_reconnect():
    from types import SimpleNamespace

    from celery.concurrency.asynpool import AsynPool

    import worker.queue.app  # noqa: F401  (applies worker.queue.reconnect)

    watched = []
    hub = SimpleNamespace(add_reader=lambda fd, *args: watched.append(fd))
    exited = SimpleNamespace(_sentinel_poll=None)
    AsynPool._track_child_process(object.__new__(AsynPool), exited, hub)
    assert watched == []
    running = SimpleNamespace(_sentinel_poll=7)
    AsynPool._track_child_process(object.__new__(AsynPool), running, hub)
    assert watched == [7]
