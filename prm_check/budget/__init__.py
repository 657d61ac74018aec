"""Budgets: parse, plan, measure and enforce memory and time of heavy steps."""
