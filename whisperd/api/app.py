"""The app factory: the API's parts built once, the routes and error handlers installed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from whisperd.api.context import ApiContext, CompletionSource, JobPublisher
from whisperd.api.errors import install_error_handlers
from whisperd.api.hosts import HostCheck, allowed_hosts
from whisperd.api.listener import CompletionListener
from whisperd.api.publisher import Publisher
from whisperd.api.receive import UploadReceiver
from whisperd.api.routes import router
from whisperd.api.store import TaskStore
from whisperd.api.tuning import Tuning
from whisperd.api.uploads import Uploads
from whisperd.config import Config


def create_app(cfg: Config, token: str = "", listen: tuple[str, int] | None = None, *, tuning: Tuning | None = None,
               publisher: JobPublisher | None = None, listener: CompletionSource | None = None) -> FastAPI:  # fmt: skip
    """The API; ``listen`` (host, port) is where it is served, for the Host header check.

    ``publisher`` and ``listener`` stand in for the broker-facing parts when given, so the routes
    can be tested in-process without a broker; ``tuning`` shortens the fixed bounds for tests.
    """
    tuning = tuning if tuning is not None else Tuning()
    store = TaskStore(cfg.api.state_dir)
    uploads = Uploads(cfg, store, tuning)
    app = FastAPI(title="whisperd", version="1", lifespan=_lifespan)
    app.state.context = ApiContext(
        cfg=cfg,
        token=token,
        allowed_origins=frozenset(o.lower() for o in cfg.api.allowed_origins),
        store=store,
        uploads=uploads,
        receiver=UploadReceiver(cfg, uploads, tuning),
        publisher=publisher if publisher is not None else Publisher(cfg, tuning),
        listener=listener if listener is not None else CompletionListener(cfg, store, uploads.finished),
    )
    if listen is not None and (hosts := allowed_hosts(cfg, listen[0], tuning.allowed_hosts)) is not None:
        app.add_middleware(HostCheck, allowed_hosts=hosts, port=listen[1])
    install_error_handlers(app)
    app.include_router(router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The background threads run while the server does; the publisher's connection closes after them."""
    ctx: ApiContext = app.state.context
    ctx.uploads.start()
    ctx.listener.start()
    yield
    ctx.listener.stop()
    ctx.uploads.stop()
    ctx.publisher.close()
