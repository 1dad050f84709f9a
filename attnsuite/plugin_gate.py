"""Baselines, verdicts and the regression gate (issue: regression gate). Placeholder until that lands."""
