"""The emergency cut-off switch of a node: one flag that the guard, the relay sender and the code-pool
keeper all obey. The state is persisted, so a restarted node stays cut off until an operator resumes it."""

import asyncio
import datetime as dt

from sqlalchemy import Connection, delete, insert, select

from jukinet.domain.errors import JukinetError
from jukinet.storage.rows import to_us
from jukinet.storage.schema import node_flag

FLAG = "cut_off"


class CutOff(JukinetError):
    """The node was cut off by an operator; nothing crosses its links until it is resumed."""

    reason = "CUT_OFF"
    code = "UNAVAILABLE"


class LinkSwitch:
    def __init__(self, node: str, cut_off_reason: str | None = None) -> None:
        self._node = node
        self._reason = cut_off_reason
        self._changed = asyncio.Event()

    @property
    def cut_off(self) -> bool:
        return self._reason is not None

    def check(self) -> None:
        """Raises CutOff (UNAVAILABLE for the caller) while the node is cut off."""
        if self._reason is not None:
            raise CutOff(
                f"{self._node} is cut off by its operator ({self._reason}); keep your changes queued and retry later"
            )

    def set(self, reason: str | None) -> None:
        self._reason = reason
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        """Returns at the next cut-off or resume."""
        await self._changed.wait()

    async def wait_open(self) -> None:
        while self._reason is not None:
            await self.changed()


def load_reason(conn: Connection) -> str | None:
    row = conn.execute(select(node_flag.c.value).where(node_flag.c.name == FLAG)).first()
    return None if row is None else str(row.value)


def store_reason(conn: Connection, reason: str | None, now: dt.datetime) -> None:
    conn.execute(delete(node_flag).where(node_flag.c.name == FLAG))
    if reason is not None:
        conn.execute(insert(node_flag), [{"name": FLAG, "value": reason, "at_us": to_us(now)}])
