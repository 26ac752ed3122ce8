"""Mixed precision: measure each layer's sensitivity per format, then allocate formats under a budget.

>>> from nnforge.compress.quantize.mixed import layer_sensitivity, allocate_bits
>>> sens = layer_sensitivity(model, ["int8", "int4", "int2"], calibration=batches)      # doctest: +SKIP
>>> plan = allocate_bits(sens, budget=3.5, kind="avg_bits")                            # doctest: +SKIP
>>> quantize_(model, WeightOnlyConfig(fmt="int4", plan=plan.formats))                   # doctest: +SKIP

The allocator starts every layer at its most precise candidate and repeatedly takes the cheapest step
down (least added error per byte, or per millisecond, saved) until the budget holds — the greedy
solution of the knapsack that HAWQ-style allocators solve, with the measured error as the cost.
"""

from __future__ import annotations

from nnforge.compress.quantize.mixed.allocate import Plan, allocate_bits
from nnforge.compress.quantize.mixed.sensitivity import LayerOption, layer_sensitivity

__all__ = ["LayerOption", "layer_sensitivity", "Plan", "allocate_bits"]
