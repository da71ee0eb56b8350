"""Face folders to batches: the dataset, the protocol's draw, cached inputs, augmentation,
batches."""
