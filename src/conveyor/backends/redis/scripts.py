"""The script registry: every Lua script in ``lua/``, as EVAL text and as one FUNCTION library.

Each transition is one ``lua/<name>.lua`` file, atomic on the Redis server. Adding a script
is adding its file (and the Python method that calls ``conn.scripts["<name>"]``): `SCRIPTS`
finds it. A script's file is the body of a function of ``(KEYS, ARGV)``; it runs after the
shared helpers (``lua/prelude.lua``) and a small header generated from Python's tables
(`CONSTANTS`: the job fields and their indexes, the job states, the ready-set rank width),
so a new job field or state needs no Lua edit.

Every script is static text (no user string is ever spliced into it) and takes the same
three leading arguments:

* ``ARGV[1]`` the key prefix, ``ARGV[2]`` ``"1"`` in cluster mode, ``ARGV[3]`` "now" as epoch
  seconds, or ``""`` to read the server's clock (``TIME``) inside the script.

Key names are built in the script from the prefix and the queue name with the same formulas as
`conveyor.backends.redis.codec.Keys`. Every key a script touches carries its queue's hash tag,
so in cluster mode one call never crosses a slot (callers group by queue there).

Numbers that must round-trip exactly are written with ``%.17g`` (Lua's own ``tostring`` keeps
only 14 digits), and floats are returned as strings (Redis truncates Lua numbers to integers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from conveyor.fields import ENQUEUED, NAMES, Field, Kind
from conveyor.job import JobState

__all__ = [
    "BY_HAND",
    "CONSTANTS",
    "ENQUEUE_FIELDS",
    "ENQUEUE_RAW",
    "ENQUEUE_WIDTH",
    "FIELDS",
    "HEADER",
    "LIBRARY",
    "RANK_WIDTH",
    "SCRIPTS",
    "Script",
    "compile_scripts",
    "header",
]

# The job hash fields every read returns, in this order (`codec.decode` depends on it): the
# record's fields (`conveyor.fields`), then the cancel reason, kept beside `meta` here.
FIELDS = (*NAMES, "cancel_reason")

# Fields the enqueue script writes by hand rather than through E_SET / E_UNSET, sent last
# and only when set: the holds (`Job.waiting_for`, sent when not 0, or as "0" ahead of a
# lane) make a job `waiting` and add to its live parents' count; the lane and its limits
# (`Job.lane` and the fields after it, sent only when the job has a lane) route the job
# through its lane. A plain job's array stops before them, and its hash has no field for
# them (they decode as their defaults).
BY_HAND = ("waiting_for", "lane", "weight", "concurrency", "rate", "burst", "circuit")

# The fields an enqueue carries, in order (`codec.enqueue_args`): each job is one msgpack
# array of them (`fields.ENQUEUED`'s order, `BY_HAND` last), bytes fields (the payload)
# left empty there and sent as raw arguments after it (Redis 7.0's cmsgpack can't unpack
# msgpack `bin`).
_GENERIC = tuple(f for f in ENQUEUED if f.name not in BY_HAND)
ENQUEUE_FIELDS = (*(f.name for f in _GENERIC), *BY_HAND)
ENQUEUE_RAW = tuple(f.name for f in ENQUEUED if f.kind in (Kind.BYTES, Kind.OPT_BYTES))
ENQUEUE_WIDTH = len(ENQUEUE_FIELDS)

# Width of the fixed-size prefix of a ready-set member: priority, run_at, seq (then the id).
RANK_WIDTH = 13 + 17 + 16

_CLAIM_FIELDS = (*FIELDS, "seq", "token")  # what a claim reads of each job, in one HMGET

LuaValue = bool | int | str | tuple["LuaValue", ...] | Mapping[str, "LuaValue"]


def _may_be_unset(field: Field) -> bool:
    """Whether an enqueue may send `field` as "" (unset): optional kinds, meta and ids
    (empty)."""
    return field.kind.optional or field.kind in (Kind.META, Kind.IDS)


# What the Lua side takes from Python, rendered as ``local NAME = <value>`` into `HEADER`.
CONSTANTS: dict[str, LuaValue] = {
    "F": FIELDS,
    "F_CLAIM": _CLAIM_FIELDS,
    **{f"I_{name.upper()}": i for i, name in enumerate(_CLAIM_FIELDS, 1)},
    "RANK_WIDTH": RANK_WIDTH,
    "E": ENQUEUE_FIELDS,
    "E_RAW": tuple(ENQUEUE_FIELDS.index(name) + 1 for name in ENQUEUE_RAW),
    # Fields always set (written as they are) and those that may be unset ("": skipped).
    "E_SET": tuple(i for i, f in enumerate(_GENERIC, 1) if not _may_be_unset(f)),
    "E_UNSET": tuple(i for i, f in enumerate(_GENERIC, 1) if _may_be_unset(f)),
    **{f"E_{name.upper()}": i for i, name in enumerate(ENQUEUE_FIELDS, 1)},
    "KNOWN": {state.value: True for state in JobState},
}


def _lua(value: LuaValue) -> str:
    """`value` as a Lua literal: strings quoted byte by byte, so nothing in them is code."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:.- "
        return "'" + "".join(chr(b) if b in safe else f"\\{b}" for b in value.encode()) + "'"
    if isinstance(value, tuple):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    return "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items()) + "}"


def header(constants: Mapping[str, LuaValue]) -> str:
    """The Lua that defines `constants` (name → value) as locals, ahead of the prelude."""
    return "-- Generated from conveyor.backends.redis.scripts.CONSTANTS.\n" + "".join(
        f"local {name} = {_lua(value)}\n" for name, value in constants.items()
    )


HEADER = header(CONSTANTS)

_FILES = resources.files("conveyor.backends.redis").joinpath("lua")


@dataclass(frozen=True, slots=True)
class Script:
    """One script of the registry.

    Attributes:
        name: its file's name without ``.lua`` (``"claim"``).
        text: the whole script for ``EVAL`` / ``EVALSHA`` (header, prelude, then the body).
        function: its name in the FUNCTION `LIBRARY` (``FCALL``).
    """

    name: str
    text: str
    function: str


def compile_scripts(constants: Mapping[str, LuaValue]) -> tuple[dict[str, Script], str]:
    """Every ``lua/*.lua`` file but the prelude as a `Script`, and the FUNCTION library,
    with `constants` in the header (`CONSTANTS` for `SCRIPTS` and `LIBRARY`).

    The library holds every script as one Redis FUNCTION library, named after a hash of its
    text, so two Conveyor versions sharing a server each call their own. The prelude's
    helpers and tables are made once, at FUNCTION LOAD, instead of on every call as with
    EVAL (measured: about 40 µs of server CPU per call on a 2-core VM).
    """
    prelude = header(constants) + _FILES.joinpath("prelude.lua").read_text("utf-8")
    bodies = {
        f.name.removesuffix(".lua"): f.read_text("utf-8")
        for f in sorted(_FILES.iterdir(), key=lambda f: f.name)  # sorted: a stable hash
        if f.name.endswith(".lua") and f.name != "prelude.lua"
    }
    # In the library each script is a function `MAIN.<name>` (a table, not locals: Lua allows
    # 200 locals per chunk), registered through the prelude's `run`; as a script for EVAL,
    # its own `main`.
    mains = "local MAIN = {}\n" + "".join(
        f"MAIN.{name} = function(KEYS, ARGV)\n{body}\nend\n" for name, body in bodies.items()
    )
    tag = hashlib.sha1((prelude + mains).encode()).hexdigest()[:12]
    regs = "".join(
        f"redis.register_function('cv{tag}_{name}', function(KEYS, ARGV)\n"
        f"  return run(MAIN.{name}, KEYS, ARGV)\nend)\n"
        for name in bodies
    )
    library = f"#!lua name=conveyor_{tag}\n{prelude}{mains}{regs}"
    registry = {
        name: Script(
            name,
            f"{prelude}local function main(KEYS, ARGV)\n{body}\nend\n"
            "return run(main, KEYS, ARGV)\n",
            f"cv{tag}_{name}",
        )
        for name, body in bodies.items()
    }
    return registry, library


SCRIPTS, LIBRARY = compile_scripts(CONSTANTS)
