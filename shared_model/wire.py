"""The names on the wire between the coordinator and the sites: the records of a round's
messages and the keys inside them. Both sides import them from here, so a name is spelled once.

A train message carries ``ARRAYS`` (the global weights) and ``CONFIG``; a train reply carries
``ARRAYS`` (the update), ``METRICS``, ``SITE`` (the site's name) and ``PRIVACY`` (its DP settings
and ε so far); an evaluate reply carries ``METRICS`` and ``SITE``.
"""

# Records of a message.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"
PRIVACY = "privacy"

# CONFIG: what the coordinator sends with the weights.
SERVER_ROUND = "server-round"  # set by Flower's strategies
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx
MODEL_SCHEMA = "model-schema"  # digest of the exchanged tensor names, shapes and dtypes
APP_VERSION = "app-version"

# SITE: the name the site calls itself (checked against its registered key).
SITE_NAME = "name"

# METRICS of a train or evaluate reply (SERVER_ROUND is echoed, so a stale reply is recognised).
NUM_EXAMPLES = "num-examples"  # the weight of a reply in FedAvg-type aggregation
SITE_WEIGHT = "site-weight"  # 1.0 per site that trained: the equal weights client-level DP needs
STEPS = "steps"
SECONDS = "seconds"
EPSILON = "epsilon"  # ε the site has spent so far under DP-SGD
BUDGET_EXHAUSTED = "privacy-budget-exhausted"  # 1: the site's next round would pass its ε budget
SECAGG_CLIPPED = "secagg-clipped-fraction"  # share of delta coordinates SecAgg+'s range clipped
ZERO_SHOT_ACA = "zero-shot-aca"  # federated evaluation's score on the site's test split
