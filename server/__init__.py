"""The RetinaFL coordinator: the Flower ServerApp, the round loop with checkpoints, quorum and
deadlines, strategy construction, and the ``retina-server`` / ``retina-sim`` / ``retina-export`` commands."""
