"""Site data: the manifest format, image readers, preprocessing, the training data set,
adapters for public layouts and the procedural phantom generator."""
