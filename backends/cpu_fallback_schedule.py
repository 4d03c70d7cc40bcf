"""A default CPU schedule for the kernels that neither tuning nor this project schedules.

TVM's CPU pipeline (``relax.backend.cpu_generic``) schedules nothing: without a tuning database every
legalized op, a residual add, a pixel shuffle's transpose, a resize, a first conv, runs as one
serial loop nest on one core. Next to a hand-scheduled gated kernel those serial ops become most of
a model's time (a 256x256 super-resolution net: 20 of 55 ms). This rule, the CPU counterpart of
dlight's GPU ``Fallback``, gives each such kernel the schedule a user would write first:

- inline what can be inlined (padding into the conv that reads it, reshapes into their reader);
- per remaining block, the spatial loops outside its reduction loops, all but the innermost fused
  into one loop run in parallel over the cores;
- a reduction's innermost spatial loop moved inside its reduction loops, with the initialisation
  split off, so that the loop LLVM vectorizes is the one along the output's contiguous axis.

Preserves: the result of every kernel, bit for bit: each output element still sums its terms in the
same order (only whole output elements move between cores and loop positions). Kernels that are
scheduled already (by MetaSchedule's database, or the gated kernels of backends/gated_conv.py, which
are hand-written loops) are left alone, as is any kernel this rule cannot analyse (opaque blocks) or
whose loops refuse one of its steps: such a kernel keeps TVM's serial loops rather than failing the build.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule, normalize_prim_func, try_inline
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target

from edgesparse.backends.gated_conv import shape_of


class ParallelFallback(ScheduleRule):
    """The rule (for ``tvm.s_tir.dlight.ApplyDefaultSchedule``); llvm targets only."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target) or shape_of(func) is not None:
            return None
        schedule = s_tir.Schedule(func)
        blocks = normalize_prim_func(schedule)
        if blocks is None:
            return None
        try:
            _parallelize(schedule, blocks)
        except ScheduleError:
            return None
        return schedule


def _parallelize(schedule: s_tir.Schedule, blocks: list) -> None:
    """The steps of the module docstring on ``schedule``, block by block (dlight's SBlockInfo list)."""
    for block in try_inline(schedule, blocks):
        kinds = block.dom_kind()
        loops = schedule.get_loops(block.block_rv)
        if "O" in kinds or len(loops) != len(kinds) or "S" not in kinds:
            continue
        spatial = [loop for loop, kind in zip(loops, kinds) if kind == "S"]
        reduction = [loop for loop, kind in zip(loops, kinds) if kind == "R"]
        if reduction:
            schedule.reorder(*spatial[:-1], *reduction, spatial[-1])
        outer = spatial[:-1] or spatial
        schedule.parallel(schedule.fuse(*outer) if len(outer) > 1 else outer[0])
        if reduction:  # after parallel, which wants a block with its init
            schedule.decompose_reduction(block.block_rv, reduction[0])
