"""Dashboard charts scale to the data (a cost of a few thousandths is visible) and print
amounts with enough precision (no per-model "0.00")."""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET

import pytest

from control.web import charts

NS = {"s": "http://www.w3.org/2000/svg"}
INNER_H = charts.H - charts.PAD_T - charts.PAD_B


def _svg(markup) -> ET.Element:
    return ET.fromstring(str(markup))


def _axis_labels(root: ET.Element) -> list[str]:
    return [t.text for t in root.findall("s:text", NS) if t.get("text-anchor") == "end"]


@pytest.mark.parametrize(("vmax", "top", "step", "labels"), [
    (0.0034, 0.004, 0.001, ["0.004", "0.003", "0.002", "0.001", "0"]),
    (0.45, 0.5, 0.1, ["0.5", "0.4", "0.3", "0.2", "0.1", "0"]),
    (7, 8, 2, ["8", "6", "4", "2", "0"]),
    (1234, 1250, 250, ["1.25k", "1k", "750", "500", "250", "0"]),
    (2.2, 2.5, 0.5, ["2.5", "2.0", "1.5", "1.0", "0.5", "0"]),
    (3_100_000, 4_000_000, 1_000_000, ["4M", "3M", "2M", "1M", "0"]),
    (0, 1, 0.25, ["1.00", "0.75", "0.50", "0.25", "0"]),
])
def test_the_axis_fits_the_data(vmax, top, step, labels):
    scale = charts.nice_scale(vmax)
    assert scale.top == pytest.approx(top) and scale.step == pytest.approx(step)
    assert scale.top >= vmax and scale.intervals <= 5
    got = _axis_labels(_svg(charts.bar_chart("t", ["a"], [vmax])))
    assert got[::-1] == labels  # drawn from the bottom up


def test_a_small_spend_fills_the_cost_chart():
    costs = [0.0012, 0.0034, 0.0008]  # USD per bucket: the old axis was 0-1
    root = _svg(charts.bar_chart("Cost", ["a", "b", "c"], costs))
    heights = [float(r.get("height")) for r in root.findall("s:rect", NS)]
    assert max(heights) > INNER_H * 0.8
    assert _axis_labels(root)[-1] == "0.004"


def test_per_model_costs_keep_their_digits():
    root = _svg(charts.hbar_chart("Cost per model", [("sim-gpt", 0.000345),
                                                     ("sim-claude", 0.0213),
                                                     ("big", 1234.5678), ("whole", 3.0)]))
    values = [t.text for t in root.findall("s:text", NS) if t.get("text-anchor") is None]
    assert values == ["0.000345", "0.0213", "1234.57", "3"]


def test_tick_labels_are_always_distinct():
    rng = random.Random(12)
    for _ in range(500):
        vmax = 10 ** rng.uniform(-6, 9)
        labels = _axis_labels(_svg(charts.line_chart("t", ["a"], [("s", [vmax])])))
        assert len(set(labels)) == len(labels), (vmax, labels)
        top = charts.nice_scale(vmax)
        assert vmax <= top.top <= vmax * 2.5 + 1e-12


def test_values_in_tooltips_are_not_rounded_to_zero():
    root = _svg(charts.bar_chart("Cost", ["10:00"], [0.000004], "USD"))
    (tip,) = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")][1:]
    assert re.fullmatch(r"10:00: 0\.000004 USD", tip)
