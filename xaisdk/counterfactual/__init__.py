"""Counterfactual explainers: generators that show the change that moves a classifier's output."""
