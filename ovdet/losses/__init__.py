"""Matching and training losses: ``HungarianMatcher`` assigns queries to boxes, ``SetCriterion``
computes the named loss terms, ``weighted_sum`` applies ``LossConfig.weights``."""

from ovdet.losses.criterion import SetCriterion, weighted_sum
from ovdet.losses.matcher import HungarianMatcher, build_matcher

__all__ = ["HungarianMatcher", "SetCriterion", "build_matcher", "weighted_sum"]
