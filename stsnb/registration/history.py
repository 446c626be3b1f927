"""Metric per iteration, recorded by registration callbacks (no module state); seeds; the metric's
value alone."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import SimpleITK as sitk

HISTORY_COLUMNS = ("step", "level", "iteration", "metric")


def sampling_seed(seed: int) -> int:
    """The metric-sampling seed SimpleITK gets: seed + 1 (SimpleITK reads 0 as 'use the wall
    clock', which would make every run different)."""
    return int(seed) + 1


def metric_value(method: sitk.ImageRegistrationMethod, fixed: sitk.Image,
                 moving: sitk.Image) -> float:
    """`method`'s metric at its initial transform (raises RuntimeError as SimpleITK does).

    The value needs no image gradient, so the gradient images that an optimisation would use
    are not computed first: the same value in about half the time.
    """
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    return float(method.MetricEvaluate(fixed, moving))


@dataclass
class MetricRecorder:
    """Collects (step, level, iteration, metric) rows from a registration method's events."""

    step: str
    level_offset: int = 0  # added to the method's level (when levels run as separate calls)
    rows: list[dict] = field(default_factory=list)

    def attach(self, method: sitk.ImageRegistrationMethod) -> None:
        """Record the metric at every optimizer iteration of `method`."""
        method.AddCommand(sitk.sitkIterationEvent, lambda: self._record(method))

    def _record(self, method: sitk.ImageRegistrationMethod) -> None:
        self.rows.append({
            "step": self.step,
            "level": int(method.GetCurrentLevel()) + self.level_offset,
            "iteration": int(method.GetOptimizerIteration()),
            "metric": float(method.GetMetricValue()),
        })

    def table(self) -> pd.DataFrame:
        """The rows as a table (columns HISTORY_COLUMNS)."""
        return pd.DataFrame(self.rows, columns=list(HISTORY_COLUMNS))
