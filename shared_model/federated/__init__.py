"""The federated task seam shared by the ClientApp and the coordinator: the task interface and
registry (``task``), a site's round data and helpers (``site``), the foundation model's task
(``foundation``)."""
