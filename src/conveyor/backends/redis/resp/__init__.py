"""Our own RESP client for a single Redis server: `Endpoint` (where and how to connect),
`protocol` (the wire: commands packed and replies parsed by hiredis, errors as redis-py's),
`Pipe` (one multiplexed, reconnecting connection) and the Lua callers on it (`scripting`).

The backend uses it on a single server for its scripts, reads and blocking waits (one `Pipe`
for everything but ``BLPOP``, plus one per concurrent ``BLPOP``); see
`conveyor.backends.redis.connect` for which connection serves what.
"""

from conveyor.backends.redis.resp.endpoint import Endpoint
from conveyor.backends.redis.resp.pipe import Pipe
from conveyor.backends.redis.resp.protocol import drop_transport
from conveyor.backends.redis.resp.scripting import PipeFunction, PipeScript

__all__ = ["Endpoint", "Pipe", "PipeFunction", "PipeScript", "drop_transport"]
