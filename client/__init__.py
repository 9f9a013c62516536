"""A hospital site of a RetinaFL federation: the Flower ClientApp, its local training and
evaluation task, and ``retina-client``. Site data paths never leave this package's process."""
