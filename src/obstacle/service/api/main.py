"""Joins the routers: the resources under /v1, operations at the root."""

from __future__ import annotations

from fastapi import APIRouter

from obstacle.service.api.routes import analyses, checkpoints, operations, probe, runs, train_log

api_router = APIRouter(prefix="/v1")
api_router.include_router(runs.router)
api_router.include_router(probe.router)
api_router.include_router(checkpoints.router)
api_router.include_router(train_log.router)
api_router.include_router(analyses.router)

root_router = APIRouter()
root_router.include_router(operations.router)
