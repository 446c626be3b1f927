"""Chapter 04: the network (model, pretrained weights, frozen features and their precision),
the folds, the FC head (head: its exact dual form; stage: the resumable runs on disk) and the
linear head (linear, linear_runs)."""
