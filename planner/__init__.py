"""The analytical planner: model specs, the cost model, the solver and the Plan schema. Never imports torch."""
