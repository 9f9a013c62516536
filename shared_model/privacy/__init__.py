"""Differential privacy for training at a site (or centrally): DP-SGD with Opacus on a
per-example decomposable objective, privacy units (image or patient), Poisson sampling of units,
an accountant whose history is persisted in a ledger on the site's disk, and the config checks
that refuse combinations without a valid guarantee. Used by the federated sites (``client``),
the centralized trainer and the synthetic generator."""
