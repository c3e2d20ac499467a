"""Real clients against a real cluster: redis-py's client-side cache, a RESP2 client in
REDIRECT mode, and pub/sub across nodes. Run by tests/tests/real_clients.rs with the
addresses of three nodes: A (the reader), C (the writer), B.

Every check raises on failure; the last line printed is "ok".
"""
import sys
import time

import urllib.request

import redis
from redis.cache import CacheConfig

a_port, b_port, c_port = (int(p) for p in sys.argv[1:4])
key = sys.argv[4]
a_admin = sys.argv[5]


def gets_on_a():
    text = urllib.request.urlopen(f"http://{a_admin}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith('opencluster_commands_total{command="get"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0
deadline_s = 5.0


def until(cond, what):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# 1. redis-py's own cache on node A; writes through node C.
writer = redis.Redis(port=c_port)
writer.set(key, "v1")
cached = redis.Redis(port=a_port, protocol=3, cache_config=CacheConfig())
assert cached.get(key) == b"v1"
before = gets_on_a()
for _ in range(5):
    assert cached.get(key) == b"v1"
# The client served those from its own cache: node A saw none of them.
assert gets_on_a() == before, f"node A served {gets_on_a() - before} of 5 GETs: the client did not cache"
writer.set(key, "v2")
until(lambda: cached.get(key) == b"v2", "redis-py's cache to see the write through node C")
print("redis-py client-side cache: invalidated across nodes")

# 2. A RESP2 client in REDIRECT mode: invalidations arrive on __redis__:invalidate.
listener = redis.Connection(port=a_port, protocol=2)
listener.connect()
listener.send_command("CLIENT", "ID")
listener_id = listener.read_response()
listener.send_command("SUBSCRIBE", "__redis__:invalidate")
assert listener.read_response() == [b"subscribe", b"__redis__:invalidate", 1]
tracker = redis.Redis(port=a_port, protocol=2, single_connection_client=True)
assert tracker.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", listener_id) == b"OK"
assert tracker.execute_command("CLIENT", "GETREDIR") == listener_id
tracker.get(key)
writer.set(key, "v3")
assert listener.can_read(timeout=deadline_s), "no redirected invalidation"
got = listener.read_response()
assert got == [b"message", b"__redis__:invalidate", [key.encode()]], got
print("RESP2 REDIRECT: invalidation received")

# 3. Pub/sub across nodes: subscribed on B, published through C.
sub = redis.Redis(port=b_port).pubsub()
sub.subscribe("news")
assert sub.get_message(timeout=2)["type"] == "subscribe"
psub = redis.Redis(port=a_port, protocol=3).pubsub()
psub.psubscribe("ne*")
assert psub.get_message(timeout=2)["type"] == "psubscribe"
receivers = writer.publish("news", "hello")
assert receivers == 2, f"PUBLISH counted {receivers} receivers"
m = sub.get_message(timeout=2)
assert m and m["data"] == b"hello" and m["channel"] == b"news", m
m = psub.get_message(timeout=2)
assert m and m["type"] == "pmessage" and m["data"] == b"hello" and m["pattern"] == b"ne*", m
numsub = writer.pubsub_numsub("news")
assert numsub == [(b"news", 1)], numsub
assert writer.pubsub_numpat() == 1
print("pub/sub across nodes: delivered")
print("ok")
