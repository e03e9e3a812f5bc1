"""PlanError: input the planner cannot plan for (a GPU budget below the weights, host RAM too small for the
offloaded KV, a fixed knob that does not fit). The CLI prints it as one line on stderr and exits with 2.

Leaves out: parsing errors (planner.units.UnitError) and unknown names (ModelSpecError, ProfileError).
"""


class PlanError(ValueError):
    """Bad input to the planner; the message says what would fit (the minimum budget, the longest context)."""
