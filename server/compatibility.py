"""Which federation features go together, checked before a run starts: secure aggregation hides
the individual updates that server-side clipping and robust aggregators need and quantises
float64 deltas itself; client-level DP is accounted for a clipped sum. Then the federated task
checks its own privacy settings (:meth:`shared_model.federated.task.FederatedTask.resolve`)."""

from __future__ import annotations

from shared_model.config import FederationAppConfig
from shared_model.federated.task import task_for
from shared_model.model.update_codec import ENCODINGS

ROBUST_STRATEGIES = ("fedtrimmedavg", "fedmedian", "krum")
SECAGG_STRATEGIES = ("fedavg", "fedprox")  # the securely summed mean delta is their aggregate


class FederationConfigError(ValueError):
    """Federation settings that cannot work together."""


def federation_problems(app: FederationAppConfig) -> list[str]:
    """What in ``app``'s strategy, secure aggregation, central DP and update encoding conflicts."""
    problems = []
    secagg, central, strategy = app.secagg.enabled, app.privacy.central != "none", app.strategy.name
    if secagg and central:
        problems.append("secagg=on with privacy.central: server-side clipping needs each site's update, "
                        "which secure aggregation hides (clip at the sites: privacy.mode=dp-sgd)")
    if secagg and strategy in ROBUST_STRATEGIES:
        problems.append(f"secagg=on with strategy={strategy}: a robust aggregator needs the "
                        "individual updates, which secure aggregation hides")
    elif secagg and strategy not in SECAGG_STRATEGIES:
        problems.append(f"secagg=on with strategy={strategy}: Flower's implementation aggregates the "
                        f"individual replies, which secure aggregation hides; use one of {SECAGG_STRATEGIES}")
    if app.federation.update_encoding not in ENCODINGS:
        problems.append(f"federation.update_encoding must be one of {ENCODINGS}, got "
                        f"{app.federation.update_encoding!r}")
    elif secagg and app.federation.update_encoding != "fp32":
        problems.append(f"secagg=on with federation.update_encoding={app.federation.update_encoding}: SecAgg+ "
                        "quantises float64 deltas itself; use update_encoding=fp32")
    if central and strategy in ROBUST_STRATEGIES:
        problems.append(f"privacy.central with strategy={strategy}: client-level DP is accounted for "
                        "a clipped sum (FedAvg-type strategies only)")
    return problems


def check_federation(app: FederationAppConfig) -> FederationAppConfig:
    """``app`` checked (FederationConfigError listing every conflict, then the task's
    PrivacyConfigError) and resolved by its task (DP-SGD model fixes)."""
    problems = federation_problems(app)
    if problems:
        raise FederationConfigError("federation configuration refused:\n  - " + "\n  - ".join(problems))
    return task_for(app.task).resolve(app)
