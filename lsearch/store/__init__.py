"""Storages and the catalog of what lsearch writes into them."""
