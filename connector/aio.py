"""What tds's event loops (each on a thread of its own) share when they end."""

from __future__ import annotations

import asyncio

__all__ = ["cancel_the_rest"]


async def cancel_the_rest() -> None:
    """Cancel every other task of the running loop and wait for them to end, then give
    the callbacks their cancellation scheduled (a transport's ``connection_lost``, which
    closes its socket) one turn to run.

    Call it last, before the loop is closed: a task still pending then is destroyed with
    whatever it holds. A TLS server's connection still in its handshake, say, is owned
    only by the loop's task accepting it; cancelled, that task closes it, and left alone
    its socket would stay open until the garbage collector finds it.
    """
    others = asyncio.all_tasks() - {asyncio.current_task()}
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    await asyncio.sleep(0)
