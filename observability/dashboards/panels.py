"""Panel and variable builders with maskfleet's defaults.

Every panel and query points at the `$datasource` variable, so one dashboard works against
whichever Prometheus the Grafana instance has; every query also honours `$namespace`.
"""

from __future__ import annotations

from typing import TypeVar

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
)
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
REF_IDS = "ABCDEFGHIJ"

P = TypeVar("P", timeseries.Panel, stat.Panel, bargauge.Panel, table.Panel)


def query(expr: str, legend: str = "", *, instant: bool = False) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    if legend:
        target = target.legend_format(legend)
    if instant:
        target = target.instant().format(PromQueryFormat.TABLE)
    return target


def _with_targets(panel: P, targets: tuple[prometheus.Dataquery, ...]) -> P:
    if len(targets) > len(REF_IDS):
        raise ValueError(f"too many queries in one panel: {len(targets)}")
    for ref_id, target in zip(REF_IDS, targets, strict=False):
        panel = panel.with_target(target.ref_id(ref_id))
    return panel.datasource(DATASOURCE)


def graph(title: str, description: str, unit: str, *targets: prometheus.Dataquery,
          width: int = 12, height: int = 8, stacked: bool = False,
          minimum: float | None = None, maximum: float | None = None) -> timeseries.Panel:
    panel = (
        timeseries.Panel().title(title).description(description).unit(unit)
        .span(width).height(height).line_width(1).fill_opacity(40 if stacked else 10)
        .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                .placement(LegendPlacement.BOTTOM).show_legend(True))
    )
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL))
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return _with_targets(panel, targets)


def single(title: str, description: str, unit: str, *targets: prometheus.Dataquery,
           width: int = 4, height: int = 4, thresholds: tuple[float, float] | None = None,
           decimals: int | None = None) -> stat.Panel:
    """A stat panel; `thresholds` = (warn, bad) turn it orange then red."""
    panel = (
        stat.Panel().title(title).description(description).unit(unit).span(width).height(height)
        .graph_mode(BigValueGraphMode.AREA)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    if thresholds is not None:
        panel = panel.thresholds(steps(*thresholds))
    return _with_targets(panel, targets)


def bars(title: str, description: str, unit: str, *targets: prometheus.Dataquery,
         width: int = 12, height: int = 8, minimum: float | None = None,
         maximum: float | None = None) -> bargauge.Panel:
    panel = (
        bargauge.Panel().title(title).description(description).unit(unit)
        .span(width).height(height).orientation(VizOrientation.HORIZONTAL)
        .display_mode(BarGaugeDisplayMode.GRADIENT)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return _with_targets(panel, targets)


def listing(title: str, description: str, *targets: prometheus.Dataquery,
            width: int = 12, height: int = 8) -> table.Panel:
    """A table of instant-query label sets (which version each role serves, running jobs)."""
    return _with_targets(
        table.Panel().title(title).description(description).span(width).height(height), targets
    )


def steps(warn: float, bad: float) -> dashboard.ThresholdsConfig:
    return dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([
        Threshold(value=None, color="green"),
        Threshold(value=warn, color="orange"),
        Threshold(value=bad, color="red"),
    ])


def datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def namespace_variable(metric: str) -> dashboard.QueryVariable:
    """Namespaces where `metric` is scraped; All (`.*`) also matches series without one."""
    return (
        dashboard.QueryVariable("namespace").label("Namespace").datasource(DATASOURCE)
        .query(f"label_values({metric}, namespace)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def base(uid: str, title: str, description: str, tags: list[str],
         namespace_metric: str) -> dashboard.Dashboard:
    """A dashboard with the shared variables and a drop-down to its sibling dashboards."""
    return (
        dashboard.Dashboard(title).uid(uid).description(description)
        .tags(["maskfleet", *tags]).editable().refresh("30s").time("now-1h", "now")
        .timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(namespace_variable(namespace_metric))
        .link(dashboard.DashboardLink("maskfleet").type(DashboardLinkType.DASHBOARDS)
              .tags(["maskfleet"]).as_dropdown(True).include_vars(True).keep_time(True))
    )
