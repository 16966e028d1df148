"""stub"""

from bench.context import Ctx
from bench.report import Section


def run(ctx: Ctx) -> Section:
    return Section("memory")
