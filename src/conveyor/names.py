"""Validation of names that become storage keys: queues, task names, unique keys, locks."""

from __future__ import annotations

import re

from conveyor.errors import InvalidOption

__all__ = ["check_key", "check_lock_name", "check_queue", "check_task_name"]

_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_TASK = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")
_KEY = re.compile(r"[A-Za-z0-9_.:@/+=#-]{1,255}")
_LOCK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+=#-]{0,199}")


def check_queue(name: str) -> str:
    """Return `name` if it is a valid queue name, else raise `InvalidOption`."""
    if not isinstance(name, str) or not _QUEUE.fullmatch(name):
        raise InvalidOption(
            f"invalid queue name {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . : - "
            "starting with a letter or digit"
        )
    return name


def check_task_name(name: str) -> str:
    """Return `name` if it is a valid task name, else raise `InvalidOption`."""
    if not isinstance(name, str) or not _TASK.fullmatch(name):
        raise InvalidOption(
            f"invalid task name {name!r}: use 1-200 characters from A-Z a-z 0-9 _ . : - "
            "starting with a letter or underscore"
        )
    return name


def check_key(key: str) -> str:
    """Return `key` if it is a valid unique key, else raise `InvalidOption`."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidOption(
            f"invalid job key {key!r}: use 1-255 characters from A-Z a-z 0-9 _ . : @ / + = # -"
        )
    return key


def check_lock_name(name: str) -> str:
    """Return `name` if it is a valid lock name, else raise `InvalidOption`."""
    if not isinstance(name, str) or not _LOCK.fullmatch(name):
        raise InvalidOption(
            f"invalid lock name {name!r}: use 1-200 characters from A-Z a-z 0-9 _ . : @ / + = # - "
            "starting with a letter or digit"
        )
    return name
