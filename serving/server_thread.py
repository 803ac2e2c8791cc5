"""The gateway and the embedded engines in a background thread of another process (`ServerThread`)."""

from __future__ import annotations

import asyncio
import threading

from serving.core.metrics import ServingMetrics
from serving.engines import Engines, load_embedded
from serving.options import ServeOptions
from serving.server import attach_engines, create_server


class ServerThread:
    """The gateway and the embedded engines in a background thread of this process, listening on `address` only
    (a unix socket): for an executor that hosts its own models (a Ray Data actor). Same servicers, same bytes as
    `semgen serve`."""

    def __init__(self, opts: ServeOptions, address: str):
        opts.check()
        self.address = address
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="semgen-server", daemon=True)
        self._thread.start()
        self._engines = Engines()
        try:
            asyncio.run_coroutine_threadsafe(self._start(opts), self._loop).result()
        except BaseException:
            self.close()
            raise

    async def _start(self, opts: ServeOptions) -> None:
        metrics = ServingMetrics()
        self._gateway = await create_server(opts, metrics)
        self._gateway.server.add_insecure_port(self.address)
        await self._gateway.server.start()
        self._engines = await asyncio.to_thread(load_embedded, opts, metrics)
        await attach_engines(self._gateway, self._engines, opts.models)

    async def _stop(self) -> None:
        if hasattr(self, "_gateway"):
            await self._gateway.server.stop(None)
        for engine in self._engines.loaded():
            await engine.close()

    def close(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
