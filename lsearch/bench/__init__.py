"""Measuring lsearch: speed against the usual way, pruned against unpruned searches."""
