"""Matching and training losses: ``matcher.HungarianMatcher`` assigns queries to boxes,
``criterion.SetCriterion`` computes the terms of ``registry.LOSS_TERMS``, ``criterion.weighted_sum``
applies ``LossConfig.weights``.

Nothing is imported here: the config imports the torch-free ``registry`` without loading torch.
"""
