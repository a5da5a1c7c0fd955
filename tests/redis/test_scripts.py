"""The script registry: every ``lua/*.lua`` file is a script, and the Lua side takes the job
fields and states from Python's tables, so a new field or state needs no Lua edit."""

from __future__ import annotations

from importlib import resources

import redis.asyncio as aioredis

from conveyor.backends.redis import scripts
from conveyor.job import JobState


def test_every_lua_file_is_a_script_of_the_library() -> None:
    files = resources.files("conveyor.backends.redis").joinpath("lua").iterdir()
    names = {f.name.removesuffix(".lua") for f in files if f.name.endswith(".lua")}
    assert set(scripts.SCRIPTS) == names - {"prelude"}
    for name, script in scripts.SCRIPTS.items():
        assert script.name == name
        assert f"redis.register_function('{script.function}'," in scripts.LIBRARY
        assert script.text.startswith(scripts.HEADER)


def test_the_header_is_rendered_from_python_tables() -> None:
    header = scripts.HEADER
    assert "local KNOWN = {" + ", ".join(f"['{s.value}'] = true" for s in JobState) + "}" in header
    claim = (*scripts.FIELDS, "seq", "token")
    for i, name in enumerate(claim, 1):
        assert f"local I_{name.upper()} = {i}\n" in header
    assert scripts.header({"S": "it's \\ \n", "T": (1, True)}) == (
        "-- Generated from conveyor.backends.redis.scripts.CONSTANTS.\n"
        "local S = 'it\\39s \\92 \\10'\nlocal T = {1, true}\n"
    )  # quoted byte by byte: nothing in a string can end it


async def test_every_script_and_the_library_load(raw: aioredis.Redis) -> None:
    for script in scripts.SCRIPTS.values():
        await raw.script_load(script.text)  # compiles
    await raw.function_load(scripts.LIBRARY, replace=True)
    name = scripts.LIBRARY.partition("\n")[0].removeprefix("#!lua name=")

    def flat(reply: object) -> list[object]:
        if isinstance(reply, list | tuple):
            return [x for r in reply for x in flat(r)]
        if isinstance(reply, dict):
            return flat([*reply.keys(), *reply.values()])
        return [reply]

    listed = flat(await raw.function_list(library=name))
    assert {s.function.encode() for s in scripts.SCRIPTS.values()} <= set(listed)


async def test_a_new_job_state_needs_no_lua_edit(raw: aioredis.Redis) -> None:
    """A store with one more state (``held``, say) in `JobState`: the same Lua files, given
    the state through the header, treat it as a known state (a claim leaves a held job
    alone), where the library without it leases the job as one in a garbage state."""
    more = dict(scripts.CONSTANTS)
    more["KNOWN"] = {**{s.value: True for s in JobState}, "held": True}
    with_held, library = scripts.compile_scripts(more)
    await raw.function_load(library, replace=True)
    await raw.function_load(scripts.LIBRARY, replace=True)

    async def claim(function: str) -> tuple[list[object], bytes]:
        await raw.hset(
            "{conveyor}:job:j1",
            mapping={"id": "j1", "queue": "default", "state": "held", "seq": 1, "token": 0},
        )
        await raw.zadd("{conveyor}:q:default:ready", {"0" * scripts.RANK_WIDTH + "j1": 0})
        args = ["conveyor", "0", "100.0", 10, "30.0", "w", "default"]
        reply = await raw.fcall(function, 1, "{conveyor}:seq", *args)  # type: ignore[misc]
        return reply, await raw.hget("{conveyor}:job:j1", "state")

    reply, state = await claim(with_held["claim"].function)
    assert reply[1:] == [0] and state == b"held"  # known: not leased
    reply, state = await claim(scripts.SCRIPTS["claim"].function)
    assert len(reply) == 4 and state == b"running"  # unknown (garbage): leased, to be failed
